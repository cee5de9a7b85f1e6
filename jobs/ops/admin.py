"""Operator reads and actions over traind's Redis records: job pages, workers, queues, retry, purge, health.

Shared by the ops commands (``traind workers|health|retry|purge``) and ``traind serve`` so both show the same
numbers. Every state change still goes through :meth:`jobs.redis.store.JobStore.transition` (the one Lua transition).

>>> # page = list_page(store, state="running", limit=50); workers(store)
"""

from __future__ import annotations

import json
import logging
import socket
from typing import TYPE_CHECKING, Any

import redis

from jobs.contract import keys, lua
from jobs.contract.events import EventKind
from jobs.contract.states import RETRYABLE, TERMINAL, JobState
from jobs.errors import IllegalTransitionError, JobNotFoundError
from jobs.redis import telemetry
from jobs.redis.store import JobStore, parse_record

if TYPE_CHECKING:
    from jobs.storage.base import Storage

log = logging.getLogger("traind.admin")
LIST_FIELDS = ["id", "name", "state", "queue", "epoch", "epochs", "restarts", "preemptions", "attempt", "best_epoch",
               "best_value", "stopped_early", "worker", "created_at", "updated_at", "started_at", "finished_at",
               "error", "device"]
_WORKER_INT = ("pid", "jobs_done", "seen", "devices")
_WORKER_FLOAT = ("rss_mb", "cpu_percent", "gpu_mem_mb")


def _decode(v: bytes | None) -> str | None:
    return None if v is None else v.decode(errors="replace")


_MONITORS: dict[str, str] = {}  # job id -> checkpoint monitor: a spec never changes, so this cache is never stale


def list_page(store: JobStore, *, state: str | None = None, name: str | None = None, queue: str | None = None,
              limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """One page of job summaries, newest first: ``{"total", "offset", "limit", "items"}``.

    Unfiltered: the index gives the page and the total (O(page)). A state filter reads that state's set. Name and
    queue filters run in one Lua pass over the candidates and return only the matching ids.
    """
    if not (state or name or queue):
        pipe = store.r.pipeline(transaction=False)
        pipe.zcard(keys.JOBS_INDEX)
        pipe.zrevrange(keys.JOBS_INDEX, offset, offset + limit - 1)
        total, raw_ids = pipe.execute()
        page = [i.decode() for i in raw_ids]
    else:
        if name or queue:
            src = json.dumps(store.list_ids(state)) if state else "[]"
            needle = (name or "").lower()
            found = store.r.eval(lua.LIST_FILTER, 0, keys.PREFIX, state or "all", needle, queue or "", src)
            ids = [i.decode() for i in found]
        else:
            ids = store.list_ids(state)
        total, page = len(ids), ids[offset:offset + limit]
    pipe = store.r.pipeline(transaction=False)
    for jid in page:
        pipe.hmget(keys.job(jid), LIST_FIELDS)
    unknown = [jid for jid in page if jid not in _MONITORS]
    for jid in unknown:
        pipe.hget(keys.job(jid), "spec")
    res = pipe.execute()
    for jid, spec in zip(unknown, res[len(page):]):
        if spec is not None:
            if len(_MONITORS) > 100_000:
                _MONITORS.clear()
            _MONITORS[jid] = _monitor(spec) or "val_loss"
    items = []
    for jid, vals in zip(page, res[:len(page)]):
        if vals[0] is None:
            continue
        rec = parse_record({f: v.decode(errors="replace") for f, v in zip(LIST_FIELDS, vals) if v is not None})
        rec["monitor"] = _MONITORS.get(jid, "val_loss")
        items.append(rec)
    return {"total": int(total), "offset": offset, "limit": limit, "items": items}


def _monitor(spec: bytes | None) -> str | None:
    try:
        return json.loads(spec or b"null")["checkpoint"]["monitor"]
    except (ValueError, TypeError, KeyError):
        return "val_loss"  # the spec's default checkpoint monitor


def workers(store: JobStore) -> list[dict[str, Any]]:
    """Registered workers (host, device, current job, CPU, RSS, GPU memory, last heartbeat), newest first."""
    now = store.now_ms()
    ids = [i.decode() for i in store.r.zrevrange(keys.WORKERS, 0, -1)]
    pipe = store.r.pipeline(transaction=False)
    for wid in ids:
        pipe.hgetall(keys.worker(wid))
    out = []
    for wid, raw in zip(ids, pipe.execute()):
        w: dict[str, Any] = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        if not w:
            continue  # registry entry whose hash expired: the supervisor forgets it
        w["id"] = wid
        for f in _WORKER_INT:
            if f in w:
                w[f] = int(float(w[f]))
        for f in _WORKER_FLOAT:
            if f in w:
                w[f] = float(w[f])
        w.setdefault("job", None)
        w.setdefault("gpu_mem_mb", None)
        w["heartbeat_age_s"] = round((now - w.get("seen", now)) / 1000, 3)
        out.append(w)
    return out


def queues(store: JobStore) -> list[dict[str, Any]]:
    """Each traind RQ queue with its depth (messages waiting): ``device`` is the name's device segment (``gpu-x2`` for
    jobs that need 2 devices of one worker), ``kind`` and ``devices`` its parts."""
    from jobs.contract.queue import queue_key  # rq: imported on use, so `traind serve` starts fast

    names = sorted(n.decode().removeprefix("rq:queue:") for n in store.r.smembers("rq:queues"))
    names = [n for n in names if n.startswith(f"{keys.PREFIX}.")]
    pipe = store.r.pipeline(transaction=False)
    for n in names:
        pipe.llen(queue_key(n))
    out = []
    for n, depth in zip(names, pipe.execute()):
        parsed = keys.parse_rq_queue_name(n)
        if parsed is None:  # not a name traind writes (a hand-made queue under the prefix): shown as it is
            _, q, device, prio = (n.split(".", 3) + ["", "", ""])[:4]
            parsed = {"queue": q, "device": device, "kind": device, "devices": 1, "priority": prio}
        out.append({"name": n, **parsed, "depth": int(depth)})
    return out


def retry(store: JobStore, job_id: str) -> int:
    """Run a failed or cancelled job again from its checkpoint as a new attempt; returns the new attempt.

    Raises IllegalTransitionError for a job that is not failed/cancelled, JobNotFoundError for an unknown id.
    """
    from jobs.redis.delivery import requeue  # rq: imported on use, so `traind serve` starts fast

    raw = store.raw(job_id)
    if raw.get("state") not in {s.value for s in RETRYABLE}:
        raise IllegalTransitionError(
            f"job {job_id} is {raw.get('state')}; only a failed or cancelled job can be retried")
    attempt = int(raw.get("attempt") or 1)
    # Fenced on the attempt: two concurrent retries cannot both enqueue.
    requeue(store, job_id, attempt=attempt, queue=raw["queue"], retry=True, kind=EventKind.RETRIED,
            fields={"reason": "retried by an operator", "finished_at": None, "error": None, "traceback": None,
                    "cancel_requested": None, "stopped_early": None},
            msg=f"retried by an operator: attempt {attempt + 1} resumes from the last checkpoint")
    telemetry.record_requeue(store.r, "retry")
    return attempt + 1


def purge(store: JobStore, storage: Storage | None, older_than_s: float, states: list[str] | None = None,
          dry_run: bool = False) -> list[str]:
    """Remove finished jobs (records, history, events, checkpoint files) finished more than ``older_than_s`` ago."""
    wanted = [JobState(s) for s in (states or [s.value for s in TERMINAL])]
    bad = [s.value for s in wanted if s not in TERMINAL]
    if bad:
        raise ValueError(f"purge: only finished jobs can be purged; received state(s) {bad}, expected a subset of "
                         f"{sorted(s.value for s in TERMINAL)}")
    cutoff = store.now_ms() - int(older_than_s * 1000)
    victims: list[tuple[str, str]] = []
    for st in wanted:
        ids = [m.decode() for m in store.r.smembers(keys.state_index(st.value))]
        pipe = store.r.pipeline(transaction=False)
        for jid in ids:
            pipe.hmget(keys.job(jid), ["finished_at", "updated_at"])
        for jid, (fin, upd) in zip(ids, pipe.execute()):
            when = int(float(fin or upd or 0))
            if when and when < cutoff:
                victims.append((jid, st.value))
    if dry_run or not victims:
        return [v[0] for v in victims]
    gone = {v[0] for v in victims}
    for i in range(0, len(victims), 500):
        pipe = store.r.pipeline(transaction=False)
        for jid, st_value in victims[i:i + 500]:
            pipe.delete(keys.job(jid), keys.history(jid), keys.checkpoints(jid), keys.events(jid), keys.token(jid))
            pipe.srem(keys.state_index(st_value), jid)
            pipe.zrem(keys.JOBS_INDEX, jid)
            pipe.zrem(keys.PENDING, jid)
            pipe.zrem(keys.LEASES, jid)
        pipe.execute()
    # An idempotency key of a purged job would hand a resubmission a job that no longer exists.
    for k in store.r.scan_iter(match=keys.idempotency("*"), count=1000):
        v = store.r.get(k)
        if v is not None and v.decode() in gone:
            store.r.delete(k)
    if storage is not None:
        for jid in gone:
            try:
                storage.delete_prefix(_job_key(jid))  # a local dir or every object under the job's prefix
            except Exception:  # a refused (confined) key is left alone
                pass
    return [v[0] for v in victims]


def retention(store: JobStore, storage_location: str, ttl_s: float, every_s: float = 60.0,
              storage_retry_s: float | None = None) -> list[str]:
    """Supervisor hook for ``TRAIND_FINISHED_TTL_S``: purge finished jobs older than ``ttl_s``, at most once per
    ``every_s`` across all supervisors (a Redis lock decides which one); returns the purged ids."""
    if ttl_s <= 0:
        return []
    if not store.r.set(f"{keys.PREFIX}:retention:lock", "1", nx=True, px=int(every_s * 1000)):
        return []
    from jobs.storage.factory import open_storage

    kw = {} if storage_retry_s is None else {"retry_s": storage_retry_s}
    gone = purge(store, open_storage(storage_location, **kw), ttl_s)
    if gone:
        log.info("retention: purged %d finished job(s) older than %.0f s", len(gone), ttl_s)
    return gone


def _job_key(job_id: str) -> str:
    from jobs.storage.base import job_key

    return job_key(job_id)


def health(r: redis.Redis, *, worker: str | None = None, supervisor: bool = False, max_age_s: float = 15.0
           ) -> tuple[bool, str]:
    """(healthy, one-line reason). Redis reachable; with ``worker`` its heartbeat fresh (``local``: any worker on this
    host); with ``supervisor`` some supervisor finished a pass within ``max_age_s``."""
    try:
        r.ping()
        store = JobStore(r)
        now = store.now_ms()
    except redis.RedisError as e:
        return False, f"redis unreachable: {type(e).__name__}: {e}"
    if worker is not None:
        ws = workers(store)
        if worker == "local":
            ws = [w for w in ws if w.get("host") == socket.gethostname()]
        else:
            ws = [w for w in ws if w["id"] == worker]
        if not ws:
            return False, f"worker {worker}: not registered"
        w = min(ws, key=lambda w: w["heartbeat_age_s"])
        if w["heartbeat_age_s"] > max_age_s:
            return False, f"worker {w['id']}: last heartbeat {w['heartbeat_age_s']:.1f} s ago (> {max_age_s:g} s)"
        return True, f"worker {w['id']}: heartbeat {w['heartbeat_age_s']:.1f} s ago"
    if supervisor:
        last = r.zrevrange(keys.SUPERVISORS, 0, 0, withscores=True)
        if not last:
            return False, "supervisor: no pass recorded"
        sid, ms = last[0][0].decode(), last[0][1]
        age = (now - ms) / 1000
        if age > max_age_s:
            return False, f"supervisor {sid}: last pass {age:.1f} s ago (> {max_age_s:g} s)"
        return True, f"supervisor {sid}: last pass {age:.1f} s ago"
    from jobs.redis.replication import replication_note

    return True, f"redis reachable ({replication_note(r)})"


def job_exists(store: JobStore, job_id: str) -> None:
    if not store.r.exists(keys.job(job_id)):
        raise JobNotFoundError(f"job {job_id!r} not found")
