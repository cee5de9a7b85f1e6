"""Lua of fair share between owners (see :mod:`jobs.contract.fair` for the rule and its settings).

``FAIR_CHARGE`` is part of the TRANSITION script: when an attempt leaves ``running`` it records the attempt's
device time for its owner, in the same atomic step as the state change, so usage is charged exactly once per attempt
whoever ends it (the worker, the supervisor after a lost lease, an operator) and a crash never charges twice or loses
a charge. ``FAIR_POP`` is how a worker takes its next message when fair share is on.

Both build keys from the prefixes they are given (the filter-index prefix, the job key prefix) as the other scripts
do: fine on one Redis (with or without replicas and Sentinel), not meant for Redis Cluster.
"""

from __future__ import annotations

# The devices a job holds, from its RQ queue name (``traind.default.gpu-x2.high`` -> 2; every other name -> 1).
_DEVICES = """
local function fair_devices(q)
  local n = tonumber(string.match(q or '', '%-x(%d+)%.[^.]+$') or '1')
  if not n or n ~= n or n < 1 or n > 1024 then return 1 end
  return n
end
"""

USAGE_KEEP = 64  # ended attempts kept per owner (the newest); older ones have decayed away at any sane half-life
USAGE_TTL_MS = 7 * 86_400_000  # an owner idle this long is forgotten (its usage has long decayed to ~0)

# fair_charge(filter-index prefix, job key, job id, now): one member "<device_ms>:<job_id>:<attempt>" scored by the
# end time in the owner's usage zset; a job recorded without an owner (before owners existed) is not charged.
FAIR_CHARGE = (
    _DEVICES
    + f"""
local function fair_charge(idx, job_key, job_id, now)
  local f = redis.call('HMGET', job_key, 'owner', 'queue', 'started_at', 'attempt')
  local started = tonumber(f[3])
  if not f[1] or not started or started ~= started then return end
  local ms = math.min(math.max(0, now - started) * fair_devices(f[2]), 1e15)
  local key = idx .. 'usage:' .. f[1]
  redis.call('ZADD', key, now, string.format('%d:%s:%s', ms, job_id, tostring(f[4] or '0')))
  redis.call('ZREMRANGEBYRANK', key, 0, -{USAGE_KEEP + 1})
  redis.call('PEXPIRE', key, {USAGE_TTL_MS})
end
"""
)

# KEYS: leases, fair-claiming, filter-index prefix (string), fair-policy, queue keys in the worker's pop order...
# ARGV: head_max, half_life_ms, default max running (-1: none), per-owner limits (json object), claim_ttl_ms,
#       scan_max, policy (json, stored for readers), job key prefix
# Returns {'take', queue key, rq id, owner} | {'blocked'} (messages wait, all of owners at their limit) | {'empty'}.
FAIR_POP = (
    """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""
    + _DEVICES
    + """
local head_max, half, default_max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local limits, scan, jp = cjson.decode(ARGV[4]), tonumber(ARGV[6]), ARGV[8]
local idx = KEYS[3]
if redis.call('GET', KEYS[4]) ~= ARGV[7] then redis.call('SET', KEYS[4], ARGV[7]) end
-- a popped message nobody claimed within the TTL (its worker died): no longer counts as running
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))

-- a key that is no hash (planted) reads as no job: that message goes to the worker's reject path
local function hm(key, ...)
  local r = redis.pcall('HMGET', key, ...)
  if type(r) ~= 'table' or r.err then return nil end
  return r
end
local function waiting(st) return st == 'queued' or st == 'requeued' end

-- running jobs and devices per owner, and the running attempts' device time so far: from the leases (the truth of
-- what runs), plus messages popped but not claimed yet (else two workers popping at once could pass a limit)
local jobs_n, devs_n, run_ms, seen = {}, {}, {}, {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, scan - 1)) do
  local f = hm(jp .. id, 'owner', 'queue', 'started_at', 'state')
  if f and f[4] == 'running' then
    local o, d = f[1] or '', fair_devices(f[2])
    local st = tonumber(f[3]) or now
    if st ~= st then st = now end
    jobs_n[o] = (jobs_n[o] or 0) + 1
    devs_n[o] = (devs_n[o] or 0) + d
    run_ms[o] = (run_ms[o] or 0) + math.min(math.max(0, now - st), 1e15) * d
    seen[id] = true
  end
end
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, scan - 1)) do
  local jid, att = string.match(m, '^(.+)%-a(%d+)$')
  local f = jid and hm(jp .. jid, 'owner', 'queue', 'state', 'attempt')
  if f and not seen[jid] and waiting(f[3]) and f[4] == att then
    local o = f[1] or ''
    jobs_n[o] = (jobs_n[o] or 0) + 1
    devs_n[o] = (devs_n[o] or 0) + fair_devices(f[2])
  else
    redis.call('ZREM', KEYS[2], m)  -- claimed (now in the leases), requeued as a later attempt, or gone
  end
end

local usage_of = {}
local function usage(o)
  if usage_of[o] then return usage_of[o] end
  local u = run_ms[o] or 0
  local rows = redis.pcall('ZRANGE', idx .. 'usage:' .. o, 0, -1, 'WITHSCORES')
  if type(rows) == 'table' and not rows.err then
    for i = 1, #rows - 1, 2 do
      local ms, at = tonumber(string.match(rows[i], '^(%d+):')), tonumber(rows[i + 1])
      if ms and at and at == at then u = u + ms * math.pow(2, -math.max(0, now - at) / half) end
    end
  end
  usage_of[o] = u
  return u
end
local function at_limit(o)
  local lim = limits[o]
  if type(lim) ~= 'number' then lim = default_max end
  return lim >= 0 and (jobs_n[o] or 0) >= lim
end

local nonempty = false
for k = 5, #KEYS do
  local q = KEYS[k]
  local ids = redis.call('LRANGE', q, 0, head_max - 1)
  if #ids > 0 then nonempty = true end
  local best, best_key
  for pos, rq in ipairs(ids) do
    local jid, att = string.match(rq, '^(.+)%-a(%d+)$')
    local f = jid and hm(jp .. jid, 'owner', 'state', 'attempt')
    if not f or not waiting(f[2]) or f[3] ~= att then
      -- malformed, or a stale duplicate: taken at once, the worker's existing paths refuse or drop it
      redis.call('LREM', q, 1, rq)
      return {'take', q, rq, ''}
    end
    local o = f[1] or ''
    if not at_limit(o) then
      local key = {devs_n[o] or 0, usage(o), pos}
      if not best or key[1] < best_key[1] or (key[1] == best_key[1] and (key[2] < best_key[2]
          or (key[2] == best_key[2] and key[3] < best_key[3]))) then
        best, best_key = rq, key
      end
    end
  end
  if best then
    redis.call('LREM', q, 1, best)
    redis.call('ZADD', KEYS[2], now, best)
    local jid = string.match(best, '^(.+)%-a%d+$')
    local f = hm(jp .. jid, 'owner')
    return {'take', q, best, (f and f[1]) or ''}
  end
end
if nonempty then return {'blocked'} end
return {'empty'}
"""
)
