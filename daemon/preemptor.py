"""The supervisor's preemption pass: read who waits and who runs, :func:`daemon.preemption.decide`, flag the victims.

A preemption is only a flag on the running job (``preempt_requested`` = the waiting job it is for), set atomically
while that attempt still runs; its worker sees it at its next heartbeat and stops exactly as on SIGTERM: a step
checkpoint at the next batch boundary, back to the queue with ``preemptions`` + 1 (not a restart), and the freed
worker pops the higher-priority job. A claim key per waiting job (``keys.preempt_claim``) keeps several supervisors
from flagging two victims for one job. A flag whose waiting job stopped waiting before the worker acted is withdrawn.

Reads are bounded: the head of each queue (:data:`HEAD` messages), at most :data:`LIMIT` workers, running jobs and
queues; the pass returns at once when no queue holds a high- or default-priority job (nothing can preempt).

>>> # Preemptor(store, settings).step(store.now_ms())   # -> ids of the jobs flagged this pass
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from typing import Any

import redis

from daemon.preemption import RANK, Cluster, Running, Waiting, Worker, decide, priority_of, withdrawn
from jobs.contract import keys
from jobs.contract.events import EventKind, event
from jobs.contract.fair import owners_at_limit
from jobs.contract.ids import is_job_id, parse_rq_job_id
from jobs.contract.lua import _NOW
from jobs.contract.queue import queue_key
from jobs.contract.records import JobRecord, WorkerRecord, log_problems
from jobs.redis import telemetry
from jobs.redis.store import JobStore
from jobs.settings import SupervisorSettings

log = logging.getLogger("traind.supervisor")

HEAD = 16  # messages read from the head of each queue: a freed worker pops the head, never the tail
LIMIT = 1000  # queues, workers and running jobs read per pass
CLAIM_TTL_MS = 3_600_000  # a claim is void once its victim stops running anyway; the TTL only bounds leftovers
_WAITING = ("queued", "requeued")
_RUN_FIELDS = ["state", "attempt", "worker", "queue", "started_at", "preempt_requested"]

# KEYS: victim job, victim events, claim ; ARGV: victim id, attempt, for job, event(json), events_max, claim ttl ms,
# job-key prefix. Flags a running attempt once; refused when the waiting job already has a victim still running.
REQUEST = _NOW + """
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'preempt_requested')
if st[1] ~= 'running' or st[2] ~= ARGV[2] then return 'gone' end
if st[3] and st[3] ~= '' then return 'flagged' end
local other = redis.call('GET', KEYS[3])
if other and other ~= ARGV[1] then
  local o = redis.call('HMGET', ARGV[7] .. other, 'state', 'preempt_requested')
  if o[1] == 'running' and o[2] == ARGV[3] then return 'taken' end
end
redis.call('HSET', KEYS[1], 'preempt_requested', ARGV[3], 'preempt_requested_at', now,
           'preempt_requested_at_utc', iso(now))
redis.call('SET', KEYS[3], ARGV[1], 'PX', tonumber(ARGV[6]))
local ev = cjson.decode(ARGV[4]); ev['ts'] = now; ev['time'] = iso(now)
redis.call('RPUSH', KEYS[2], cjson.encode(ev))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
return 'ok'
"""

# KEYS: victim job ; ARGV: for job. Drops the flag only while it still names that job and the job still runs.
WITHDRAW = """
local st = redis.call('HMGET', KEYS[1], 'state', 'preempt_requested')
if st[1] ~= 'running' or st[2] ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'preempt_requested', 'preempt_requested_at', 'preempt_requested_at_utc')
return 1
"""


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class Preemptor:
    """One preemption pass per supervisor step (:meth:`step`)."""

    def __init__(self, store: JobStore, settings: SupervisorSettings) -> None:
        self.store, self.r, self.settings = store, store.r, settings
        self._request = self.r.register_script(REQUEST)
        self._withdraw = self.r.register_script(WITHDRAW)
        # An idle worker re-registers about every second, a busy one at every heartbeat: three lease TTLs unseen is
        # gone (the supervisor drops it after worker_stale_s).
        self.live_ms = int(max(3 * settings.lease_ttl_s, 3.0) * 1000)
        self._attempts: dict[str, int] = {}  # running job -> the attempt this pass read
        # Victims this supervisor flagged that may still hold the flag: passes with nothing waiting check only while
        # there are some (a flag another supervisor set is withdrawn by that one; one left by a restart only costs a
        # preemption that was no longer needed).
        self._flagged: set[str] = set()

    def step(self, now_ms: int) -> list[str]:
        """Flag this pass' victims; returns their ids. A bug or a bad record here never stops the supervisor's other
        duties (leases, deliveries): logged, and the next pass decides again from Redis."""
        try:
            return self._step(now_ms)
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # the run loop backs off
        except Exception:
            log.exception("preemption pass failed; retrying next pass")
            return []

    def _step(self, now_ms: int) -> list[str]:
        waiting = self._waiting()
        if not waiting and not self._flagged:
            return []  # nothing can preempt, and no flag of ours may need withdrawing: the common, cheap pass
        running = self._running({w.priority for w in waiting})
        if running is None:
            return []  # no running job of a lower priority than the best waiting one, and no flag of ours
        cluster = Cluster(self._workers(now_ms), running, waiting)
        self._withdraw_stale(cluster)
        self._flagged = {r.id for r in cluster.running if r.pending_for} & self._flagged
        decision = decide(cluster, now_ms, int(self.settings.preempt_min_run_s * 1000))
        for reason, n in Counter(h.reason for h in decision.held).items():
            telemetry.incr(self.r, f"preemptions_held:{reason}", n)  # tests and operators: "held back", not missed
        flagged: list[str] = []
        for p in decision.requests:
            if self._flag(p.victim, p.for_job, p.worker, p.victim_priority, p.for_priority):
                flagged.append(p.victim)
                self._flagged.add(p.victim)
        return flagged

    # -- reads ---------------------------------------------------------------------------------------------------
    def _waiting(self) -> list[Waiting]:
        """Jobs at the head of the traind queues, still waiting for the attempt their message names; empty when no
        high- or default-priority job waits (then nothing can preempt)."""
        names = [_s(n).removeprefix(queue_key("")) for n in  # RQ's set holds queue keys (rq:queue:<name>)
                 itertools.islice(self.r.sscan_iter(keys.RQ_QUEUES, count=LIMIT), LIMIT)]
        queues = sorted(n for n in names if priority_of(n) is not None)
        if not queues:
            return []
        pipe = self.r.pipeline(transaction=False)
        for q in queues:
            pipe.lrange(queue_key(q), 0, HEAD - 1)
        heads = pipe.execute(raise_on_error=False)
        msgs: list[tuple[str, str, int]] = []
        for q, head in zip(queues, heads):
            if isinstance(head, Exception):  # a planted non-list key: that queue only
                continue
            for raw in head:
                job_id, attempt = parse_rq_job_id(_s(raw))
                if job_id is not None and attempt is not None:
                    msgs.append((q, job_id, attempt))
        if not any(RANK[priority_of(q) or "low"] < RANK["low"] for q, _, _ in msgs):
            return []
        pipe = self.r.pipeline(transaction=False)
        for _, job_id, _ in msgs:
            pipe.hmget(keys.job(job_id), ["state", "attempt", "updated_at", "owner"])
        out: list[Waiting] = []
        seen: set[str] = set()
        results = pipe.execute(raise_on_error=False)
        # a job whose owner is at the limit is skipped by the workers' pop: preempting for it frees nothing for it
        capped = owners_at_limit(self.r, {_s(res[3]) for res in results if isinstance(res, list) and res[3]})
        for (q, job_id, attempt), res in zip(msgs, results):
            if isinstance(res, Exception) or job_id in seen:
                continue
            rec = JobRecord.parse(dict(zip(("state", "attempt", "updated_at", "owner"), res)), job_id)
            if rec.owner in capped:
                continue
            if rec.state in _WAITING and rec.attempt == attempt:  # a stale or duplicate message waits for nothing
                seen.add(job_id)
                out.append(Waiting(job_id, q, rec.updated_at or 0))
        return out

    def _workers(self, now_ms: int) -> list[Worker]:
        ids = [_s(w) for w in self.r.zrangebyscore(keys.WORKERS, now_ms - self.live_ms, "+inf", start=0, num=LIMIT)]
        pipe = self.r.pipeline(transaction=False)
        fields = ["device", "devices", "queues", "drained"]
        for wid in ids:
            pipe.hmget(keys.worker(wid), fields)
        out: list[Worker] = []
        for wid, res in zip(ids, pipe.execute(raise_on_error=False) if ids else []):
            if isinstance(res, Exception) or res[0] is None:
                continue  # its hash expired (gone), or a key that is no hash
            rec = WorkerRecord.parse(wid, dict(zip(fields, res)))
            if rec.problems:
                log_problems(f"worker {wid}", rec.problems)
                continue
            device = rec.device or "cpu"
            queues = tuple(q for q in rec.extra.get("queues", "default").split(",") if q)
            out.append(Worker(wid, "gpu" if device.startswith("gpu") else "cpu", rec.devices or 1, queues,
                              drained=rec.extra.get("drained") == "1"))
        return out

    def _running(self, waiting_priorities: set[str]) -> list[Running] | None:
        """The running jobs (a possible victim with its ``preemptible``); None when none could be a victim and none
        carries a flag of ours (the pass has nothing to do: the rest is not read)."""
        ids = [_s(i) for i in itertools.islice(self.r.sscan_iter(keys.state_index("running"), count=LIMIT), LIMIT)]
        best = min((RANK[p] for p in waiting_priorities if p in RANK), default=len(RANK))
        if not self._flagged:  # one field first: with 1,000 running jobs the full read is most of a pass
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(keys.job(job_id), "queue")
            queues = pipe.execute(raise_on_error=False) if ids else []
            if not any(isinstance(q, bytes) and RANK.get(priority_of(_s(q)) or "high", 0) > best for q in queues):
                return None
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id), _RUN_FIELDS)
        out: list[Running] = []
        self._attempts = {}
        maybe: list[int] = []  # indexes in out of possible victims: their spec says whether they opted out
        for job_id, res in zip(ids, pipe.execute(raise_on_error=False) if ids else []):
            if isinstance(res, Exception):
                continue
            rec = JobRecord.parse(dict(zip(_RUN_FIELDS, res)), job_id)
            if rec.state != "running":
                continue
            bad = [p for p in rec.problems if p.split(":", 1)[0] in ("attempt", "started_at")]
            if bad or not rec.worker or not rec.queue or rec.started_at is None:
                # One bad row: never chosen (nothing says how long it ran), but its worker stays busy.
                log_problems(f"job {job_id} (preemption)", bad or ["worker/queue/started_at: missing"])
                if rec.worker:
                    out.append(Running(job_id, rec.worker, rec.queue or "", 0, preemptible=False))
                continue
            flag = rec.extra.get("preempt_requested") or None
            self._attempts[job_id] = rec.attempt or 0
            r = Running(job_id, rec.worker, rec.queue, rec.started_at, True, flag)
            if RANK.get(r.priority, 0) > best and flag is None:
                maybe.append(len(out))
            out.append(r)
        pipe = self.r.pipeline(transaction=False)
        for i in maybe:
            pipe.hget(keys.job(out[i].id), "spec")
        for i, raw in zip(maybe, pipe.execute(raise_on_error=False) if maybe else []):
            r = out[i]
            out[i] = Running(r.id, r.worker, r.queue, r.started_ms, _preemptible(r.id, raw, self.settings), None)
        return out


    # -- writes --------------------------------------------------------------------------------------------------
    def _flag(self, victim: str, for_job: str, worker: str, vprio: str, fprio: str) -> bool:
        attempt = self._attempts.get(victim)  # the attempt decided on: a newer one has not run its minimum yet
        if attempt is None:
            return False
        ev = event(EventKind.PREEMPT_REQUESTED, f"preemption requested for job {for_job} (priority {fprio}), waiting "
                   f"for worker {worker}: checkpointing at the next batch boundary, then back to the queue",
                   "warning", by=for_job, priority=fprio)
        res = _s(self._request(keys=[keys.job(victim), keys.events(victim), keys.preempt_claim(for_job)],
                               args=[victim, str(attempt), for_job, json.dumps(ev), self.store.events_max,
                                     CLAIM_TTL_MS, keys.job("")]))
        if res != "ok":
            log.debug("job %s: preemption for %s not requested (%s)", victim, for_job, res)
            return False
        self.store.add_event(for_job, EventKind.PREEMPT_REQUESTED, f"waiting: preempting job {victim} (priority "
                             f"{vprio}) on worker {worker}", victim=victim, priority=vprio)
        telemetry.incr(self.r, "preemptions:requested")
        telemetry.publish(self.r, victim, "event")
        log.warning("job %s (%s) preempted for job %s (%s) on worker %s", victim, vprio, for_job, fprio, worker)
        return True

    def _withdraw_stale(self, cluster: Cluster) -> None:
        flagged = [r for r in cluster.running if r.pending_for]
        if not flagged:
            return
        still: set[str] = {w.id for w in cluster.waiting}
        for r in flagged:  # a job beyond the queue heads read may still wait: ask its record
            jid = r.pending_for or ""
            if jid not in still and is_job_id(jid) and _s(self.r.hget(keys.job(jid), "state")) in _WAITING:
                still.add(jid)
        for r in withdrawn(cluster, still):
            if self._withdraw(keys=[keys.job(r.id)], args=[r.pending_for or ""]):
                self.store.add_event(r.id, EventKind.NOTE, f"preemption withdrawn: job {r.pending_for} no longer "
                                     "waits")
                log.info("job %s: preemption for %s withdrawn (no longer waiting)", r.id, r.pending_for)


def _preemptible(job_id: str, raw: Any, settings: SupervisorSettings) -> bool:
    """A stored spec's ``preemptible`` (default true); an unreadable spec is not preempted (logged once)."""
    try:
        if not isinstance(raw, bytes) or len(raw) > settings.max_spec_bytes:
            raise ValueError("missing, or over TRAIND_MAX_SPEC_BYTES")
        spec = json.loads(raw)
        value = spec.get("preemptible", True) if isinstance(spec, dict) else None
        if not isinstance(value, bool):
            raise ValueError(f"preemptible: expected true or false, received {str(value)[:40]}")
        return value
    except (ValueError, RecursionError) as e:
        log_problems(f"job {job_id} (preemption)", [f"spec: {e}"])
        return False
