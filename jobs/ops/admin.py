"""Operator reads and actions over traind's Redis records: job pages, workers, queues, retry, purge, health.

Shared by the ops commands (``traind workers|health|retry|purge``) and ``traind serve`` so both show the same
numbers. Every state change still goes through :meth:`jobs.redis.store.JobStore.transition` (the one Lua transition).

>>> # page = list_page(store, state="running", limit=50); workers(store)
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import redis

from jobs.contract import keys
from jobs.contract.events import EventKind
from jobs.contract.records import JobRecord, WorkerRecord, log_problems
from jobs.contract.states import RETRYABLE, TERMINAL, JobState
from jobs.errors import IllegalTransitionError, JobNotFoundError
from jobs.redis import packed, telemetry
from jobs.redis.store import JobStore

if TYPE_CHECKING:
    from jobs.storage.base import Storage

log = logging.getLogger("traind.admin")
LIST_FIELDS = ["id", "name", "state", "queue", "epoch", "epochs", "restarts", "preemptions", "attempt", "best_epoch",
               "best_value", "stopped_early", "worker", "created_at", "updated_at", "started_at", "finished_at",
               "error", "device", "owner"]


SCAN_MAX = 2000  # job ids one filtered request examines at most; its next_cursor continues after them
_CHUNK = 250  # ids per index read: one ZREVRANGE and one HMGET of the name index each
_MONITORS: dict[str, str] = {}  # job id -> checkpoint monitor: a spec never changes, so this cache is never stale


def list_page(store: JobStore, *, state: str | None = None, name: str | None = None, queue: str | None = None,
              limit: int = 50, offset: int = 0, cursor: str | None = None, owner: str | None = None
              ) -> dict[str, Any]:
    """One page of job summaries, newest first: ``{"total", "offset", "limit", "items", "exact", "scanned",
    "next_cursor"}``. No request's Redis work grows with the number of jobs:

    * no filter, one state, one logical queue or one ``owner``: that index gives the page and the exact total
      (O(log N + page)); an owner with a state or queue examines that owner's jobs, as below;
    * a name filter (case-insensitive "contains"), state and queue together, or a full RQ queue name: at most
      :data:`SCAN_MAX` ids of the narrowest index are examined (in chunks of a few commands); ``total`` counts the
      matches among them, ``exact`` says whether that was every candidate, and ``next_cursor`` (a job id) continues
      after the last row shown or examined (``cursor=...``). ``offset`` skips matches within the examined ids.

    Raises ValueError for a ``cursor`` that names no job of that index (e.g. one purged meanwhile).
    """
    logical, exact_queue = _queue_filter(queue)
    if owner:  # the owner's index first: one person's jobs are usually few of all (issue 24)
        idx = keys.owner_index(owner)
        others = ([keys.state_zindex(state)] if state else []) + ([keys.queue_index(logical)] if logical else [])
    elif state and logical:
        idx, others = keys.queue_index(logical), [keys.state_zindex(state)]
    elif logical:
        idx, others = keys.queue_index(logical), []
    elif state:
        idx, others = keys.state_zindex(state), []
    else:
        idx, others = keys.JOBS_INDEX, []
    start = 0
    if cursor:
        rank = store.r.zrevrank(idx, cursor)
        if rank is None:
            raise ValueError(f"cursor {cursor!r}: no such job in this listing (purged?); start again without it")
        start = int(rank) + 1
    if not (name or others or exact_queue):
        pipe = store.r.pipeline(transaction=False)
        pipe.zcard(idx)
        pipe.zrevrange(idx, start + offset, start + offset + limit - 1)
        total, raw_ids = pipe.execute()
        page = [i.decode(errors="replace") for i in raw_ids]
        more = start + offset + limit < int(total)
        out = {"total": int(total), "exact": True, "scanned": len(page),
               "next_cursor": page[-1] if page and more else None}
    else:
        matches, scanned, end = _scan(store, idx, others, (name or "").lower(), exact_queue, start)
        page = matches[offset:offset + limit]
        if len(matches) > offset + limit:
            nxt = page[-1] if page else None
        else:
            nxt = None if end else scanned[-1] if scanned else None
        out = {"total": len(matches), "exact": end and start == 0, "scanned": len(scanned), "next_cursor": nxt}
    items = _rows(store, page)
    return {"total": out["total"], "offset": offset, "limit": limit, "items": items, "exact": out["exact"],
            "scanned": out["scanned"], "next_cursor": out["next_cursor"]}


def _queue_filter(queue: str | None) -> tuple[str | None, str | None]:
    """(logical queue to index by, full RQ name to match exactly or None)."""
    if not queue:
        return None, None
    parsed = keys.parse_rq_queue_name(queue)
    return (parsed["queue"], queue) if parsed else (queue, None)


def _scan(store: JobStore, idx: str, others: list[str], needle: str, exact_queue: str | None,
          start: int) -> tuple[list[str], list[str], bool]:
    """(matching ids, ids examined, reached the index's end): at most SCAN_MAX ids from rank ``start``."""
    matches: list[str] = []
    scanned: list[str] = []
    while len(scanned) < SCAN_MAX:
        n = min(_CHUNK, SCAN_MAX - len(scanned))
        first = start + len(scanned)
        ids = [i.decode(errors="replace") for i in store.r.zrevrange(idx, first, first + n - 1)]
        if not ids:
            return matches, scanned, True
        pipe = store.r.pipeline(transaction=False)
        if needle:
            pipe.hmget(keys.IDX_NAMES, ids)
        for other in others:
            pipe.zmscore(other, ids)
        if exact_queue:
            for jid in ids:
                pipe.hget(keys.job(jid), "queue")
        res = pipe.execute(raise_on_error=False)
        names = res.pop(0) if needle else None
        member = [res.pop(0) for _ in others]
        queues_ = res if exact_queue else None
        for k, jid in enumerate(ids):
            ok = names is None or (isinstance(names, list) and names[k] is not None
                                   and needle in names[k].decode(errors="replace").lower())  # Lua lowers ASCII only
            ok = ok and all(isinstance(m, list) and m[k] is not None for m in member)
            if ok and queues_ is not None:
                q = queues_[k]
                ok = isinstance(q, bytes) and q.decode(errors="replace") == exact_queue
            if ok:
                matches.append(jid)
        scanned.extend(ids)
        if len(ids) < n:
            return matches, scanned, True
    return matches, scanned, False


def _rows(store: JobStore, page: list[str]) -> list[dict[str, Any]]:
    unknown = [jid for jid in page if jid not in _MONITORS]
    if unknown:
        pipe = store.r.pipeline(transaction=False)
        for jid in unknown:
            pipe.hget(keys.job(jid), "spec")
        for jid, spec in zip(unknown, pipe.execute(raise_on_error=False)):
            if isinstance(spec, bytes):
                if len(_MONITORS) > 100_000:
                    _MONITORS.clear()
                _MONITORS[jid] = JobRecord.parse({"spec": spec}).monitor
    items = []
    for rec in store.summaries(page, LIST_FIELDS):
        row = rec.to_dict()
        row["monitor"] = _MONITORS.get(rec.id, "val_loss")
        items.append(row)
    return items


def workers(store: JobStore) -> list[dict[str, Any]]:
    """Registered workers (host, device, current job, CPU, RSS, GPU memory, last heartbeat), newest first; a
    malformed registry hash is shown with its bad fields empty and ``problems`` (logged once)."""
    now = store.now_ms()  # once: read per worker it was a Redis round trip each (1,000 per scrape, bench.scale)
    return [w.to_dict(now) for w in worker_records(store)]


def worker_records(store: JobStore) -> list[WorkerRecord]:
    """The registered workers' records, newest first (a registry entry whose hash expired is left out)."""
    ids = [i.decode(errors="replace") for i in store.r.zrevrange(keys.WORKERS, 0, -1)]
    pipe = store.r.pipeline(transaction=False)
    for wid in ids:
        pipe.hgetall(keys.worker(wid))
    out = []
    for wid, raw in zip(ids, pipe.execute(raise_on_error=False)):
        if isinstance(raw, Exception):
            log_problems(f"worker {wid}", [f"not a hash: {raw}"])
            continue
        if not raw:
            continue  # registry entry whose hash expired: the supervisor forgets it
        w = WorkerRecord.parse(wid, raw)
        log_problems(f"worker {wid}", w.problems)
        out.append(w)
    return out


def queues(store: JobStore) -> list[dict[str, Any]]:
    """Each traind RQ queue with its depth (messages waiting): ``device`` is the name's device segment (``gpu-x2`` for
    jobs that need 2 devices of one worker), ``kind`` and ``devices`` its parts."""
    from jobs.contract.queue import queue_key  # rq: imported on use, so `traind serve` starts fast

    names = sorted(n.decode(errors="replace").removeprefix("rq:queue:") for n in store.r.smembers(keys.RQ_QUEUES))
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

    rec = store.record(job_id)
    if rec.state not in {s.value for s in RETRYABLE}:
        raise IllegalTransitionError(
            f"job {job_id} is {rec.state}; only a failed or cancelled job can be retried")
    attempt = rec.attempt or 1
    packed.unpack(store.r, job_id, store.events_max)  # a compacted job's history back in place before it runs again
    # Fenced on the attempt: two concurrent retries cannot both enqueue.
    requeue(store, job_id, attempt=attempt, queue=rec.queue or "", retry=True, kind=EventKind.RETRIED,
            fields={"reason": "retried by an operator", "finished_at": None, "error": None, "traceback": None,
                    "cancel_requested": None, "stopped_early": None},
            msg=f"retried by an operator: attempt {attempt + 1} resumes from the last checkpoint")
    telemetry.record_requeue(store.r, "retry")
    return attempt + 1


def purge(store: JobStore, storage: Storage | None, older_than_s: float, states: list[str] | None = None,
          dry_run: bool = False, limit: int | None = None, backfill: bool = True) -> list[str]:
    """Remove finished jobs (records, history, events, checkpoint files) finished more than ``older_than_s`` ago,
    oldest first, at most ``limit`` of them (all when None). Candidates come from the finished index (its score is
    the Redis clock at the final transition, so a malformed ``finished_at`` field cannot hide a job); the records
    go through :meth:`JobStore.delete`."""
    wanted = [JobState(s) for s in (states or [s.value for s in TERMINAL])]
    bad = [s.value for s in wanted if s not in TERMINAL]
    if bad:
        raise ValueError(f"purge: only finished jobs can be purged; received state(s) {bad}, expected a subset of "
                         f"{sorted(s.value for s in TERMINAL)}")
    while backfill and not store.index_backfill():  # jobs finished before the indexes existed are purged too
        pass
    cutoff = store.now_ms() - int(older_than_s * 1000)
    victims: list[str] = []
    pos = 0
    while limit is None or len(victims) < limit:
        batch = [m.decode(errors="replace") for m in
                 store.r.zrangebyscore(keys.IDX_FINISHED, "-inf", f"({cutoff}", start=pos, num=500)]
        if not batch:
            break
        pos += len(batch)
        pipe = store.r.pipeline(transaction=False)
        for st in wanted:
            pipe.zmscore(keys.state_zindex(st.value), batch)
        member = pipe.execute()
        victims += [jid for k, jid in enumerate(batch) if any(m[k] is not None for m in member)]
    victims = victims if limit is None else victims[:limit]
    if dry_run or not victims:
        return victims
    store.delete(victims)
    if storage is not None:
        for jid in victims:
            try:
                storage.delete_prefix(_job_key(jid))  # a local dir or every object under the job's prefix
            except Exception:  # a refused (confined) key is left alone
                pass
    return victims


RETENTION_BATCH = 1000  # finished jobs one retention pass removes at most (the next pass continues)


def retention(store: JobStore, storage_location: str, ttl_s: float, every_s: float = 60.0,
              storage_retry_s: float | None = None) -> list[str]:
    """Supervisor hook for ``TRAIND_FINISHED_TTL_S``: purge finished jobs older than ``ttl_s``, at most once per
    ``every_s`` across all supervisors (a Redis lock decides which one) and :data:`RETENTION_BATCH` per pass;
    returns the purged ids."""
    if ttl_s <= 0:
        return []
    if not store.r.set(keys.RETENTION_LOCK, "1", nx=True, px=int(every_s * 1000)):
        return []
    from jobs.storage.factory import open_storage

    if not store.index_backfill():  # one bounded chunk per pass until jobs from before the indexes are indexed
        return []
    kw = {} if storage_retry_s is None else {"retry_s": storage_retry_s}
    gone = purge(store, open_storage(storage_location, **kw), ttl_s, limit=RETENTION_BATCH, backfill=False)
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
        ws = worker_records(store)
        if worker == "local":
            ws = [w for w in ws if w.host == socket.gethostname()]
        else:
            ws = [w for w in ws if w.id == worker]
        if not ws:
            return False, f"worker {worker}: not registered"
        w = min(ws, key=lambda w: w.heartbeat_age_s(now))
        age = w.heartbeat_age_s(now)
        if age > max_age_s:
            return False, f"worker {w.id}: last heartbeat {age:.1f} s ago (> {max_age_s:g} s)"
        if w.extra.get("drained"):  # a lemon machine: alive, but takes no jobs
            return False, f"worker {w.id}: drained (`traind undrain {w.host}/{w.device}`)"
        return True, f"worker {w.id}: heartbeat {age:.1f} s ago"
    if supervisor:
        last = r.zrevrange(keys.SUPERVISORS, 0, 0, withscores=True)
        if not last:
            return False, "supervisor: no pass recorded"
        sid, ms = last[0][0].decode(errors="replace"), last[0][1]
        age = (now - ms) / 1000
        if age > max_age_s:
            return False, f"supervisor {sid}: last pass {age:.1f} s ago (> {max_age_s:g} s)"
        return True, f"supervisor {sid}: last pass {age:.1f} s ago"
    from jobs.redis import lemons
    from jobs.redis.replication import replication_note

    n = len(lemons.drained(r))
    return True, f"redis reachable ({replication_note(r)})" + (
        f"; {n} machine(s) drained as lemons (traind workers)" if n else "")


def job_exists(store: JobStore, job_id: str) -> None:
    if not store.r.exists(keys.job(job_id)):
        raise JobNotFoundError(f"job {job_id!r} not found")
