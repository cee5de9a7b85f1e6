"""Lua scripts: every multi-key change of a job's record happens atomically in Redis.

Times come from Redis' own clock (``TIME``) so that hosts with skewed clocks agree on lease expiry.
"""

from __future__ import annotations

from jobs.contract.fair_lua import FAIR_CHARGE

_NOW = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
-- ms -> "2026-11-28T06:32:15.123Z": a person reading the hash with redis-cli sees when, next to the ms value.
local function iso(ms)
  local s = math.floor(ms / 1000)
  local z = math.floor(s / 86400) + 719468
  local rem = s - (z - 719468) * 86400
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, math.floor(rem / 3600),
    math.floor(rem % 3600 / 60), rem % 60, ms % 1000)
end
-- The fencing token is a capability: it lives in its own key, never in the status hash that tools print.
local function token_key(job_key) return job_key .. ':token' end
"""

# The filter indexes (keys.py's IDX_PREFIX names them): per state and per logical queue a zset id -> created (ms),
# id -> lowercase name, the finished zset (id -> finished ms) and the count per (state, queue). Every script that
# creates, moves or deletes a job keeps them in step, so list filters, /metrics and purge never walk all jobs.
_INDEX = """
-- per (state, owner) counts (/metrics): only jobs recorded with an owner (jobs/contract/fair.py)
local function owner_count(idx, state, owner, by)
  if not owner then return end
  if redis.call('HINCRBY', idx .. 'owner_counts', state .. '\t' .. owner, by) <= 0 then
    redis.call('HDEL', idx .. 'owner_counts', state .. '\t' .. owner)
  end
end
local function logical_queue(q) return string.match(q, '^[^.]+%.([^.]+)%.[^.]+%.[^.]+$') or q end
-- finished: a time puts the job in the finished zset, false takes it out, nil leaves it as it is
local function index_move(idx, job_key, job_id, from, to, now, finished)
  local f = redis.call('HMGET', job_key, 'queue', 'created_at', 'name', 'owner')
  local q = logical_queue(f[1] or '')
  local created = tonumber(f[2])
  if not created or created ~= created or created == math.huge or created == -math.huge then created = now end
  if from and redis.call('ZREM', idx .. 'state:' .. from, job_id) == 1 then
    if redis.call('HINCRBY', idx .. 'counts', from .. '\t' .. q, -1) <= 0 then
      redis.call('HDEL', idx .. 'counts', from .. '\t' .. q)
    end
    owner_count(idx, from, f[4], -1)
  end
  if to then
    if redis.call('ZADD', idx .. 'state:' .. to, created, job_id) == 1 then
      redis.call('HINCRBY', idx .. 'counts', to .. '\t' .. q, 1)
      owner_count(idx, to, f[4], 1)
    end
    if f[4] then redis.call('ZADD', idx .. 'owner:' .. f[4], created, job_id) end
    redis.call('ZADD', idx .. 'queue:' .. q, created, job_id)
    redis.call('HSET', idx .. 'names', job_id, string.lower(f[3] or ''))
    if finished then redis.call('ZADD', idx .. 'finished', finished, job_id)
    elseif finished == false then redis.call('ZREM', idx .. 'finished', job_id) end
  else
    redis.call('ZREM', idx .. 'queue:' .. q, job_id)
    if f[4] then redis.call('ZREM', idx .. 'owner:' .. f[4], job_id) end
    redis.call('HDEL', idx .. 'names', job_id)
    redis.call('ZREM', idx .. 'finished', job_id)
  end
end
"""

# KEYS: job, leases, pending, events, state-index prefix (string), filter-index prefix (string), alerts outbox
# ARGV: job_id, to, allowed_from(json), terminal(json), attempt, token, fields(json), event(json|''),
#       events_max, require_lease_expired('1'|''), lease_ttl_ms, alert kind(''|jobs.alerts.kinds), outbox maxlen
TRANSITION = (
    _NOW
    + _INDEX
    + FAIR_CHARGE
    + """
local job_id, to = ARGV[1], ARGV[2]
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', ''} end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[5] then return {'fenced', cur} end
if ARGV[6] ~= '' and redis.call('GET', token_key(KEYS[1])) ~= ARGV[6] then return {'fenced', cur} end
local ok = false
for _, s in ipairs(cjson.decode(ARGV[3])) do if s == cur then ok = true end end
if not ok then return {'illegal', cur} end
if ARGV[10] == '1' then
  local exp = redis.call('ZSCORE', KEYS[2], job_id)
  if exp and tonumber(exp) > now then return {'alive', cur} end
end
if cur == 'running' and to ~= 'running' then fair_charge(KEYS[6], KEYS[1], job_id, now) end
redis.call('HSET', KEYS[1], 'state', to, 'updated_at', now, 'updated_at_utc', iso(now))
local fields = cjson.decode(ARGV[7])
for k, v in pairs(fields) do
  if k == 'token' then
    if v == cjson.null then redis.call('DEL', token_key(KEYS[1])) else redis.call('SET', token_key(KEYS[1]), v) end
  elseif v == cjson.null then redis.call('HDEL', KEYS[1], k)
  else redis.call('HSET', KEYS[1], k, tostring(v)) end
  if k:sub(-3) == '_at' and k ~= 'updated_at' then
    if v == cjson.null then redis.call('HDEL', KEYS[1], k .. '_utc')
    elseif tonumber(v) then redis.call('HSET', KEYS[1], k .. '_utc', iso(tonumber(v))) end
  end
end
redis.call('SREM', KEYS[5] .. cur, job_id)
redis.call('SADD', KEYS[5] .. to, job_id)
if to == 'running' then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[11]), job_id)
  redis.call('ZREM', KEYS[3], job_id)
  redis.call('HSET', KEYS[1], 'started_at', now, 'started_at_utc', iso(now))
else
  redis.call('ZREM', KEYS[2], job_id)
end
if to == 'queued' or to == 'requeued' then redis.call('ZADD', KEYS[3], 0, job_id) end
local terminal = false
for _, s in ipairs(cjson.decode(ARGV[4])) do if s == to then terminal = true end end
if terminal then
  redis.call('ZREM', KEYS[3], job_id)
  redis.call('HSET', KEYS[1], 'finished_at', now, 'finished_at_utc', iso(now))
  redis.call('DEL', token_key(KEYS[1]))
end
index_move(KEYS[6], KEYS[1], job_id, cur, to, now, terminal and now or false)
if ARGV[8] ~= '' then
  local ev = cjson.decode(ARGV[8]); ev['ts'] = now; ev['time'] = iso(now)
  redis.call('RPUSH', KEYS[4], cjson.encode(ev))
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[9]), -1)
  if ARGV[12] ~= '' then  -- an alerting event: its outbox entry is written with it, or neither is (jobs/alerts)
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[13], '*', 'job', job_id, 'alert', ARGV[12],
      'event', cjson.encode(ev))
  end
end
return {'ok', cur}
"""
)

# KEYS: job, leases ; ARGV: job_id, token, ttl_ms
# Renews the lease while this token still owns a running job; returns {1, cancel_requested, preempt_requested}
# (the job a supervisor preempts it for, '' when none) or {0, reason}.
HEARTBEAT = (
    _NOW
    + """
local st = redis.call('HMGET', KEYS[1], 'state', 'cancel_requested', 'preempt_requested')
if st[1] ~= 'running' or redis.call('GET', token_key(KEYS[1])) ~= ARGV[2] then return {0, tostring(st[1])} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return {1, st[2] or '0', st[3] or ''}
"""
)

# KEYS: job, history, ckpts, events ; ARGV: token, payload(json), events_max, max_history
# payload: {fields:{}, history_set:{epoch:json}, history_del:[..], ckpt_set:{epoch:json}, ckpt_del:[..], events:[{}]}
# Every write of a running job's progress is fenced by its attempt token.
FENCED_UPDATE = (
    _NOW
    + """
local st = {redis.call('HGET', KEYS[1], 'state'), redis.call('GET', token_key(KEYS[1]))}
if st[1] ~= 'running' or st[2] ~= ARGV[1] then return {0, tostring(st[1])} end
local p = cjson.decode(ARGV[2])
if p.history_set then
  for e, v in pairs(p.history_set) do
    if redis.call('HEXISTS', KEYS[2], e) == 0 and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
      return {0, 'history_limit'}
    end
    redis.call('HSET', KEYS[2], e, v)
  end
end
if p.history_del then for _, e in ipairs(p.history_del) do redis.call('HDEL', KEYS[2], tostring(e)) end end
if p.ckpt_set then for e, v in pairs(p.ckpt_set) do redis.call('HSET', KEYS[3], e, v) end end
if p.ckpt_del then for _, e in ipairs(p.ckpt_del) do redis.call('HDEL', KEYS[3], tostring(e)) end end
if p.fields then
  for k, v in pairs(p.fields) do
    if v == cjson.null then redis.call('HDEL', KEYS[1], k) else redis.call('HSET', KEYS[1], k, tostring(v)) end
  end
end
redis.call('HSET', KEYS[1], 'updated_at', now, 'updated_at_utc', iso(now))
if p.events then
  for _, ev in ipairs(p.events) do
    ev['ts'] = now; ev['time'] = iso(now); redis.call('RPUSH', KEYS[4], cjson.encode(ev))
  end
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[3]), -1)
end
return {1, 'ok'}
"""
)

# KEYS: job, idem (or ''), jobs index, state-index prefix, pending, events, filter-index prefix
# ARGV: job_id, fields(json), client_key, event(json)
CREATE = (
    _NOW
    + _INDEX
    + """
if ARGV[3] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {0, existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ARGV[1]} end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, tostring(v)) end
redis.call('HSET', KEYS[1], 'state', 'queued', 'created_at', now, 'updated_at', now, 'created_at_utc', iso(now),
           'updated_at_utc', iso(now))
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'client_key', ARGV[3])  -- purge deletes the idempotency key with the job
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('SADD', KEYS[4] .. 'queued', ARGV[1])
index_move(KEYS[7], KEYS[1], ARGV[1], false, 'queued', now, false)
redis.call('ZADD', KEYS[5], 0, ARGV[1])
local ev = cjson.decode(ARGV[4]); ev['ts'] = now; ev['time'] = iso(now)
redis.call('RPUSH', KEYS[6], cjson.encode(ev))
return {1, ARGV[1]}
"""
)

# KEYS: job, events ; ARGV: event(json), events_max
# Cancel of a running job: only a flag; the worker stops at its next batch boundary and keeps its checkpoints.
REQUEST_CANCEL = (
    _NOW
    + """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'missing' end
if st ~= 'running' then return st end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
local ev = cjson.decode(ARGV[1]); ev['ts'] = now; ev['time'] = iso(now)
redis.call('RPUSH', KEYS[2], cjson.encode(ev))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return st
"""
)

# KEYS: pending ; ARGV: job_id, score. Marks a job's message as delivered at `score` only if still pending.
MARK_DELIVERED = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) return 1 end
return 0
"""

# KEYS: job, zset ; ARGV: job_id, states that keep the entry (json).
# Drops a lease/pending entry only while the job is (still) in none of those states, so a claim or requeue that
# lands between the supervisor's read and its ZREM is never undone.
ZREM_UNLESS_STATE = """
local st = redis.call('HGET', KEYS[1], 'state')
for _, s in ipairs(cjson.decode(ARGV[2])) do if s == st then return 0 end end
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# KEYS: workers ; ARGV: cutoff (ms), worker-hash prefix, limit. Re-checks the score so a fresh heartbeat wins.
DROP_STALE_WORKERS = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, w in ipairs(stale) do
  redis.call('ZREM', KEYS[1], w)
  redis.call('DEL', ARGV[2] .. w)
end
return stale
"""

# KEYS: leases ; ARGV: ttl_ms. Every lease gets one TTL on the new primary's clock (see PrimaryWatch).
REBASE_LEASES = (
    _NOW
    + """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id) end
return #ids
"""
)

# KEYS: job, filter-index prefix ; ARGV: job_id, terminal states (json). Puts a job recorded before the filter
# indexes existed into them (idempotent: an indexed job is counted once, its finished time kept). 1 if it exists.
INDEX_JOB = (
    _NOW
    + _INDEX
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'finished_at', 'updated_at')
if not f[1] then return 0 end
index_move(KEYS[2], KEYS[1], ARGV[1], false, f[1], now, nil)
for _, s in ipairs(cjson.decode(ARGV[2])) do
  if s == f[1] then
    local fin = tonumber(f[2]) or tonumber(f[3])
    if not fin or fin ~= fin or fin == math.huge or fin == -math.huge then fin = now end
    redis.call('ZADD', KEYS[2] .. 'finished', 'NX', fin, ARGV[1])
  end
end
return 1
"""
)

# KEYS: job, history, ckpts, events, token, jobs index, leases, pending, state-index prefix, filter-index prefix,
#       idempotency prefix ; ARGV: job_id.
# Deletes one job's keys and every index entry (counts included); its idempotency key only while it names this job.
DELETE_JOB = (
    _NOW
    + _INDEX
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'client_key')
if f[1] then
  redis.call('SREM', KEYS[9] .. f[1], ARGV[1])
  index_move(KEYS[10], KEYS[1], ARGV[1], f[1], false, now, false)
end
if f[2] and redis.call('GET', KEYS[11] .. f[2]) == ARGV[1] then redis.call('DEL', KEYS[11] .. f[2]) end
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('ZREM', KEYS[10] .. 'finished', ARGV[1])
if KEYS[12] then redis.call('DEL', KEYS[12]) end  -- the compacted history and events (jobs/redis/packed.py)
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
"""
)

NOW_MS = _NOW + "return now"
