"""The job record in Redis: create, transition (the only way a state changes), fenced progress, reads.

>>> # store = JobStore(redis.Redis.from_url(url)); store.record("abc123").state; store.get("abc123")["state"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis

from jobs.alerts.kinds import OUTBOX_MAXLEN, alert_of, outbox_event
from jobs.contract import keys, lua
from jobs.contract.events import EventKind, event, kind_for_state
from jobs.contract.records import JobRecord, decode_hash, log_problems, parse_event, to_int
from jobs.contract.states import RETRYABLE, TERMINAL, JobState, allowed_sources
from jobs.errors import FencedError, IllegalTransitionError, JobNotFoundError, LimitError
from jobs.redis import packed, rqview, telemetry
from jobs.redis.badput import job_goodput
from jobs.redis.replication import run_script


def _s(v: Any) -> Any:
    """Field values cross into Lua as strings (or JSON null to delete)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _fields_json(fields: dict[str, Any] | None) -> str:
    return json.dumps({k: _s(v) for k, v in (fields or {}).items()}, separators=(",", ":"))


class Beat(NamedTuple):
    """One lease renewal: still the owner, cancel requested, the job a preemption was requested for (or None)."""

    owner: bool
    cancel: bool
    preempt_for: str | None = None


class JobStore:
    """Typed access to traind's records in one Redis database."""

    def __init__(self, r: redis.Redis, events_max: int = 2000, max_history: int = 100_000) -> None:
        self.r = r
        self.events_max = events_max
        self.max_history = max_history
        self._transition = r.register_script(lua.TRANSITION)
        self._heartbeat = r.register_script(lua.HEARTBEAT)
        self._fenced = r.register_script(lua.FENCED_UPDATE)
        self._create = r.register_script(lua.CREATE)
        self._cancel = r.register_script(lua.REQUEST_CANCEL)
        self._delivered = r.register_script(lua.MARK_DELIVERED)
        self._zrem_unless = r.register_script(lua.ZREM_UNLESS_STATE)
        self._drop_workers = r.register_script(lua.DROP_STALE_WORKERS)
        self._delete = r.register_script(lua.DELETE_JOB)
        self._index = r.register_script(lua.INDEX_JOB)

    # -- writes --------------------------------------------------------------------------------------------------
    def create(self, job_id: str, fields: dict[str, Any], client_key: str | None = None,
               pipeline: redis.client.Pipeline | None = None) -> tuple[str, bool]:
        """Create a queued job; with ``client_key``, a second create returns the first job's id.

        With ``pipeline`` the script is only queued on it (the result comes from ``pipeline.execute()``).
        """
        idem = keys.idempotency(client_key) if client_key else keys.no_idempotency(job_id)
        kw = dict(keys=[keys.job(job_id), idem, keys.JOBS_INDEX, keys.state_index(""), keys.PENDING,
                        keys.events(job_id), keys.IDX_PREFIX],
                  args=[job_id, _fields_json(fields), client_key or "",
                        json.dumps(event(EventKind.SUBMITTED, "submitted"))])
        if pipeline is not None:
            self._create(**kw, client=pipeline)  # the caller executes it (durably: replication.execute_pipeline)
            return job_id, True
        res = run_script(self.r, self._create, **kw, what=f"job {job_id}: create")
        first = res[1].decode()
        if client_key and not int(res[0]) and first != job_id and not self.r.exists(keys.job(first)):
            # The key names a job purged before purge deleted idempotency keys with their job: free it, once.
            if self.r.get(idem) == res[1]:
                self.r.delete(idem)
            res = run_script(self.r, self._create, **kw, what=f"job {job_id}: create")
        if int(res[0]):
            telemetry.publish(self.r, job_id, "created", state=JobState.QUEUED.value)
        return res[1].decode(), bool(int(res[0]))

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        attempt: int | None = None,
        token: str | None = None,
        fields: dict[str, Any] | None = None,
        event_msg: str | None = None,
        level: str = "info",
        kind: EventKind | None = None,
        event_fields: dict[str, Any] | None = None,
        require_lease_expired: bool = False,
        lease_ttl_ms: int = 0,
        only_from: Iterable[JobState] | None = None,
        retry: bool = False,
    ) -> JobState:
        """Atomically move ``job_id`` to ``to`` if the table allows it; return the previous state.

        ``attempt``/``token`` fence the change to one delivery attempt; ``require_lease_expired`` makes the
        supervisor's requeue a no-op for a job whose worker renewed its lease meanwhile. ``event_msg`` records an
        event of ``kind`` (by default the kind of the target state, e.g. ``failed``) with ``event_fields`` added.
        """
        to = JobState(to)
        sources = allowed_sources(to)
        if retry:  # an explicit operator retry (see states.RETRYABLE), never implied by the table
            sources = sorted(s.value for s in RETRYABLE) if to is JobState.REQUEUED else []
        if only_from is not None:  # narrow the table, e.g. "fail it only if nobody is running it"
            sources = [st for st in sources if st in {JobState(f).value for f in only_from}]
        ev, alert = "", ""
        if event_msg:
            ev_dict = event(kind or kind_for_state(to), event_msg, level, state=to.value, **(event_fields or {}))
            ev, alert = json.dumps(ev_dict), alert_of(ev_dict) or ""  # an alert's outbox entry: with the event
        status, cur = run_script(
            self.r, self._transition, what=f"job {job_id}: {to.value}", replay=not require_lease_expired,
            keys=[keys.job(job_id), keys.LEASES, keys.PENDING, keys.events(job_id), keys.state_index(""),
                  keys.IDX_PREFIX, keys.ALERTS_OUTBOX],
            args=[
                job_id, to.value, json.dumps(sources), json.dumps(sorted(s.value for s in TERMINAL)),
                "" if attempt is None else str(attempt), token or "", _fields_json(fields), ev, self.events_max,
                "1" if require_lease_expired else "", int(lease_ttl_ms), alert, OUTBOX_MAXLEN,
            ],
        )
        status, cur = status.decode(), cur.decode()
        if status == "missing":
            raise JobNotFoundError(f"job {job_id!r} not found")
        if status == "fenced":
            raise FencedError(f"job {job_id}: attempt {attempt} / token no longer current (state {cur})")
        if status == "illegal":
            raise IllegalTransitionError(f"job {job_id}: cannot go from {cur} to {to.value}")
        if status == "alive":
            raise FencedError(f"job {job_id}: lease was renewed; not requeued")
        telemetry.publish(self.r, job_id, "state", state=to.value, previous=cur)
        if JobState.RUNNING.value in (to.value, cur):  # RQ's tools see running jobs as executing
            rqview.on_transition(self.r, job_id, to.value, cur, attempt, (fields or {}).get("worker"))
        return JobState(cur)

    def heartbeat(self, job_id: str, token: str, ttl_ms: int) -> tuple[bool, bool]:
        """Renew the lease; returns (still_owner, cancel_requested): :meth:`beat` without the preemption."""
        b = self.beat(job_id, token, ttl_ms)
        return b.owner, b.cancel

    def beat(self, job_id: str, token: str, ttl_ms: int) -> Beat:
        """:meth:`heartbeat` with every flag a worker acts on: also the preemption a supervisor requested."""
        res = self._heartbeat(keys=[keys.job(job_id), keys.LEASES], args=[job_id, token, int(ttl_ms)])
        text = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in res]
        owner = text[0] == "1"
        return Beat(owner, owner and text[1] == "1", (text[2] if owner and len(text) > 2 else "")[:200] or None)

    def fenced_update(
        self,
        job_id: str,
        token: str,
        *,
        fields: dict[str, Any] | None = None,
        history_set: dict[int, dict[str, Any]] | None = None,
        history_del: Iterable[int] = (),
        ckpt_set: dict[int, dict[str, Any]] | None = None,
        ckpt_del: Iterable[int] = (),
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        """Write progress only while ``token`` owns the running job; raise FencedError otherwise.

        Raises LimitError (the job must fail) when a new history entry would exceed ``max_history``.
        """
        payload: dict[str, Any] = {}
        if fields:
            payload["fields"] = {k: _s(v) for k, v in fields.items()}
        if history_set:
            payload["history_set"] = {str(e): json.dumps(v) for e, v in history_set.items()}
        if hd := [int(e) for e in history_del]:
            payload["history_del"] = hd
        if ckpt_set:
            payload["ckpt_set"] = {str(e): json.dumps(v) for e, v in ckpt_set.items()}
        if cd := [int(e) for e in ckpt_del]:
            payload["ckpt_del"] = cd
        if events:
            payload["events"] = events
        kw = dict(keys=[keys.job(job_id), keys.history(job_id), keys.checkpoints(job_id), keys.events(job_id)],
                  args=[token, json.dumps(payload), self.events_max, self.max_history])
        if history_set or hd or ckpt_set or cd:  # a commit (epoch, checkpoint): replicated before acknowledged
            ok, why = run_script(self.r, self._fenced, **kw, what=f"job {job_id}: commit")
        else:  # mid-epoch progress: redone by the next write anyway
            ok, why = self._fenced(**kw)
        if not int(ok):
            why = why.decode() if isinstance(why, bytes) else str(why)
            if why == "history_limit":
                # Not fencing: this attempt still owns the job, which must fail (no retry) with a clear message.
                epochs = ", ".join(str(e) for e in sorted(history_set or {}))
                raise LimitError([f"history: recording epoch {epochs} would exceed TRAIND_MAX_HISTORY="
                                  f"{self.max_history} entries; lower fit.epochs or raise TRAIND_MAX_HISTORY"])
            raise FencedError(f"job {job_id}: no longer owned by this attempt (state {why})")
        telemetry.on_progress(self.r, job_id, history_set, ckpt_set)

    def request_cancel(self, job_id: str) -> JobState:
        """Cancel: a queued job ends now; a running one is flagged and stops at its next batch boundary."""
        ev = event(EventKind.CANCEL_REQUESTED, "cancel requested")
        st = self._cancel(keys=[keys.job(job_id), keys.events(job_id)], args=[json.dumps(ev), self.events_max]).decode()
        if st == "missing":
            raise JobNotFoundError(f"job {job_id!r} not found")
        state = JobState(st)
        telemetry.publish(self.r, job_id, "event")
        if state in (JobState.QUEUED, JobState.REQUEUED):
            try:
                return self.transition(job_id, JobState.CANCELLED, event_msg="cancelled before it started")
            except IllegalTransitionError:  # a worker claimed it in between: flag it instead
                return self.request_cancel(job_id)
        return state

    def add_event(self, job_id: str, kind: EventKind, msg: str, level: str = "info", **extra: Any) -> None:
        """Append one event outside a transition (e.g. a re-delivered message)."""
        ev = event(kind, msg, level, **extra)
        ev["ts"] = self.now_ms()
        ev["time"] = iso_ms(ev["ts"])
        pipe = self.r.pipeline()
        pipe.rpush(keys.events(job_id), json.dumps(ev))
        pipe.ltrim(keys.events(job_id), -self.events_max, -1)
        if alert := alert_of(ev):  # in the same MULTI: the outbox entry exists exactly when the event does
            pipe.xadd(keys.ALERTS_OUTBOX, {"job": job_id, "alert": alert, "event": outbox_event(ev)},
                      maxlen=OUTBOX_MAXLEN, approximate=True)
        pipe.execute()
        telemetry.publish(self.r, job_id, "event")

    def mark_delivered(self, job_id: str, when_ms: int | None = None) -> None:
        self._delivered(keys=[keys.PENDING], args=[job_id, when_ms if when_ms is not None else self.now_ms()])

    def zrem_unless_state(self, zset: str, job_id: str, keep: Iterable[JobState]) -> bool:
        """Drop ``job_id`` from ``zset`` (leases, pending) unless the job is in one of the ``keep`` states."""
        return bool(self._zrem_unless(keys=[keys.job(job_id), zset],
                                      args=[job_id, json.dumps([JobState(s).value for s in keep])]))

    def drop_stale_workers(self, cutoff_ms: int, limit: int) -> list[str]:
        """Unregister up to ``limit`` workers whose last heartbeat is at or before ``cutoff_ms``; their ids."""
        dropped = self._drop_workers(keys=[keys.WORKERS], args=[cutoff_ms, keys.worker(""), limit])
        return [d.decode(errors="replace") for d in dropped]  # any bytes: a planted member too

    def now_ms(self) -> int:
        """Redis' clock in ms (the clock all leases use). The ``TIME`` command, not a script: read-only users
        (``traind list``/``status``/``watch``) have no script rights."""
        sec, usec = self.r.time()
        return int(sec) * 1000 + int(usec) // 1000

    def delete(self, job_ids: Iterable[str]) -> int:
        """Delete finished jobs' records (status, history, checkpoint index, events, token, idempotency key) and
        every index entry, one script per job, pipelined; returns how many existed. Files are the caller's."""
        n = 0
        ids = list(job_ids)
        for i in range(0, len(ids), 500):
            pipe = self.r.pipeline(transaction=False)
            for jid in ids[i:i + 500]:
                self._delete(keys=[keys.job(jid), keys.history(jid), keys.checkpoints(jid), keys.events(jid),
                                   keys.token(jid), keys.JOBS_INDEX, keys.LEASES, keys.PENDING, keys.state_index(""),
                                   keys.IDX_PREFIX, keys.IDEMPOTENCY_PREFIX, keys.packed(jid)], args=[jid], client=pipe)
            for jid, res in zip(ids[i:i + 500], pipe.execute(raise_on_error=False)):
                if isinstance(res, Exception):  # a wrong-type key: that job's problem, not the batch's
                    log_problems(f"job {jid}", [f"delete: {res}"])
                elif int(res):
                    n += 1
        return n

    def index_backfill(self, limit: int = 1000) -> bool:
        """Index up to ``limit`` jobs recorded before the filter indexes existed (``keys.IDX_PREFIX``); True once
        every job is indexed. Resumable: the ZSCAN cursor lives in Redis, so any supervisor continues it."""
        state = self.r.get(keys.IDX_BACKFILL)
        if state == b"done":
            return True
        cursor, ids = self.r.zscan(keys.JOBS_INDEX, to_int(state), count=limit)
        terminal = json.dumps(sorted(s.value for s in TERMINAL))
        pipe = self.r.pipeline(transaction=False)
        for member, _ in ids:
            jid = member.decode(errors="replace")
            self._index(keys=[keys.job(jid), keys.IDX_PREFIX], args=[jid, terminal], client=pipe)
        pipe.execute(raise_on_error=False)  # a malformed job stays unindexed; the others are indexed
        self.r.set(keys.IDX_BACKFILL, "done" if cursor == 0 else str(cursor))
        return cursor == 0

    # -- reads ---------------------------------------------------------------------------------------------------
    def raw(self, job_id: str) -> dict[str, str]:
        """The status hash as text (non-UTF-8 bytes replaced); see :meth:`record` for the typed form."""
        data = self._hgetall(job_id)
        if not data:
            raise JobNotFoundError(f"job {job_id!r} not found")
        return decode_hash(data)[0]

    def _hgetall(self, job_id: str) -> dict[bytes, bytes]:
        try:
            return self.r.hgetall(keys.job(job_id))
        except redis.ResponseError as e:  # WRONGTYPE: whatever sits at that key is no job record
            log_problems(f"job {job_id}", [f"not a hash: {e}"])
            raise JobNotFoundError(f"job {job_id!r} not found (its record is malformed: {e})") from e

    def record(self, job_id: str) -> JobRecord:
        """The job's status hash, typed; JobNotFoundError when there is none."""
        rec = JobRecord.parse(self._hgetall(job_id), job_id)
        if not rec.exists:
            raise JobNotFoundError(f"job {job_id!r} not found")
        log_problems(f"job {job_id}", rec.problems)
        return rec

    def get(self, job_id: str, with_history: bool = True, with_goodput: bool = True) -> dict[str, Any]:
        """The job's status as a plain dict (what ``traind status --json`` prints).

        ``with_goodput=False`` leaves out the wall-time split, which reads and parses the job's whole event list:
        for loops that poll a job and never show it.
        """
        out = self.record(job_id).to_dict()
        lease = self.r.zscore(keys.LEASES, job_id)
        out["lease_expires_at"] = to_int(lease) if lease is not None else None
        if with_goodput:
            out["goodput"] = job_goodput(self, job_id, {"ckpt_stall_s": str(out.get("ckpt_stall_s") or 0)}).to_dict()
        if with_history:
            out["history"] = self.history(job_id)
            if bad := packed.packed_problem(self.r, job_id):  # a compacted job whose packed value is unreadable
                out["problems"] = [*(out.get("problems") or []), bad]
        return out

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """One entry per finished epoch, ordered by epoch (1-based ``epoch`` key in each entry); an entry that is
        not a JSON object under an integer epoch is left out (and logged once)."""
        return parse_history(packed.history_raw(self.r, job_id), f"job {job_id} history")

    def checkpoints(self, job_id: str) -> dict[int, Any]:
        """The committed checkpoint index: key -> manifest. A corrupt entry's value is kept as its raw text (the
        reader skips it with an event: ``jobs.storage.ckpt_format.check_manifest``); a non-integer key is left out."""
        out: dict[int, Any] = {}
        for k, v in self.r.hgetall(keys.checkpoints(job_id)).items():
            try:
                key = int(k)
            except ValueError:
                continue
            try:
                out[key] = json.loads(v)
            except (ValueError, RecursionError):
                out[key] = v.decode(errors="replace")
        return out

    def events(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        """The event log from ``start`` (as LRANGE), each entry parsed by :func:`~jobs.contract.records.parse_event`
        (an unreadable one is a marked note, never an error)."""
        return [parse_event(v, f"job {job_id} events") for v in packed.events_raw(self.r, job_id, start)]

    def list_ids(self, state: JobState | str | None = None, limit: int | None = None, offset: int = 0) -> list[str]:
        """Job ids, newest first; filtered by state through the state index (O(log N + page))."""
        idx = keys.JOBS_INDEX if state is None else keys.state_zindex(JobState(state).value)
        ids = self.r.zrevrange(idx, offset, -1 if limit is None else offset + limit - 1)
        return [i.decode(errors="replace") for i in ids]

    def summaries(self, ids: list[str], fields: list[str]) -> list[JobRecord]:
        """``fields`` of each job, typed, in order, pipelined per 1000; a job that is gone or whose key is not a
        hash is left out (logged once)."""
        out: list[JobRecord] = []
        for i in range(0, len(ids), 1000):
            pipe = self.r.pipeline(transaction=False)
            for jid in ids[i:i + 1000]:
                pipe.hmget(keys.job(jid), fields)
            for jid, vals in zip(ids[i:i + 1000], pipe.execute(raise_on_error=False)):
                if isinstance(vals, Exception):
                    log_problems(f"job {jid}", [f"not a hash: {vals}"])
                    continue
                if vals[0] is None:
                    continue
                rec = JobRecord.parse(dict(zip(fields, vals)), jid)
                log_problems(f"job {jid}", rec.problems)
                out.append(rec)
        return out

    def list(self, state: JobState | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Summaries (no spec, no history) of jobs, newest first; one round trip per 1000 jobs."""
        return [rec.to_dict() for rec in self.summaries(self.list_ids(state, limit), LIST_SUMMARY)]


LIST_SUMMARY = ["id", "name", "state", "epoch", "epochs", "restarts", "best_epoch", "best_value", "stopped_early",
                "worker", "created_at", "updated_at", "error", "owner"]


def parse_history(raw: dict[bytes, bytes], where: str) -> list[dict[str, Any]]:
    """A history hash (epoch -> JSON entry) as entries ordered by epoch; malformed entries left out, logged once."""
    entries: list[tuple[int, dict[str, Any]]] = []
    bad: list[str] = []
    for k, v in raw.items():
        try:
            e, entry = int(k), json.loads(v)
        except (ValueError, RecursionError, OverflowError):
            bad.append(f"{k[:40]!r}: unreadable")
            continue
        if not isinstance(entry, dict):
            bad.append(f"{e}: not a JSON object")
            continue
        entries.append((e, entry))
    log_problems(where, bad)
    return [v for _, v in sorted(entries, key=lambda kv: kv[0])]


def iso_ms(ms: int) -> str:
    """ms since the epoch -> ``2026-11-28T06:32:15.123Z`` (what the Lua scripts write next to ms fields)."""
    import datetime as _dt

    t = _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
