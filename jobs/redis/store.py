"""The job record in Redis: create, transition (the only way a state changes), fenced progress, reads.

>>> # store = JobStore(redis.Redis.from_url(url)); store.get("abc123")["state"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

from jobs.contract import keys, lua
from jobs.contract.events import EventKind, event, kind_for_state
from jobs.contract.states import RETRYABLE, TERMINAL, JobState, allowed_sources
from jobs.errors import FencedError, IllegalTransitionError, JobNotFoundError, LimitError
from jobs.redis import rqview, telemetry
from jobs.redis.replication import run_script

_INT_FIELDS = (
    "epoch", "epochs", "restarts", "preemptions", "attempt", "max_restarts", "best_epoch", "created_at",
    "updated_at", "started_at", "finished_at", "batch", "steps", "resume_epoch", "running_epoch",
)
_FLOAT_FIELDS = ("best_value",)
_JSON_FIELDS = (
    "metrics", "spec", "worker_info", "best_checkpoint", "final_checkpoint", "latest_checkpoint", "batch_metrics",
)


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

    # -- writes --------------------------------------------------------------------------------------------------
    def create(self, job_id: str, fields: dict[str, Any], client_key: str | None = None,
               pipeline: redis.client.Pipeline | None = None) -> tuple[str, bool]:
        """Create a queued job; with ``client_key``, a second create returns the first job's id.

        With ``pipeline`` the script is only queued on it (the result comes from ``pipeline.execute()``).
        """
        idem = keys.idempotency(client_key) if client_key else keys.job(job_id) + ":noidem"
        kw = dict(keys=[keys.job(job_id), idem, keys.JOBS_INDEX, keys.state_index(""), keys.PENDING,
                        keys.events(job_id)],
                  args=[job_id, _fields_json(fields), client_key or "",
                        json.dumps(event(EventKind.SUBMITTED, "submitted"))])
        if pipeline is not None:
            self._create(**kw, client=pipeline)  # the caller executes it (durably: replication.execute_pipeline)
            return job_id, True
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
        trim_history_after: int | None = None,
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
        ev = ""
        if event_msg:
            ev = json.dumps(event(kind or kind_for_state(to), event_msg, level, state=to.value, **(event_fields or {})))
        status, cur = run_script(
            self.r, self._transition, what=f"job {job_id}: {to.value}", replay=not require_lease_expired,
            keys=[keys.job(job_id), keys.LEASES, keys.PENDING, keys.events(job_id), keys.state_index(""),
                  keys.history(job_id)],
            args=[
                job_id, to.value, json.dumps(sources), json.dumps(sorted(s.value for s in TERMINAL)),
                "" if attempt is None else str(attempt), token or "", _fields_json(fields), ev, self.events_max,
                "1" if require_lease_expired else "", int(lease_ttl_ms),
                "" if trim_history_after is None else str(int(trim_history_after)),
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
        """Renew the lease; returns (still_owner, cancel_requested)."""
        ok, flag = self._heartbeat(keys=[keys.job(job_id), keys.LEASES], args=[job_id, token, int(ttl_ms)])
        return bool(int(ok)), (flag.decode() if isinstance(flag, bytes) else str(flag)) == "1"

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

    # -- reads ---------------------------------------------------------------------------------------------------
    def raw(self, job_id: str) -> dict[str, str]:
        data = self.r.hgetall(keys.job(job_id))
        if not data:
            raise JobNotFoundError(f"job {job_id!r} not found")
        return {k.decode(): v.decode() for k, v in data.items()}

    def get(self, job_id: str, with_history: bool = True) -> dict[str, Any]:
        """The job's status as a plain dict (what ``traind status --json`` prints)."""
        raw = self.raw(job_id)
        out = parse_record(raw)
        lease = self.r.zscore(keys.LEASES, job_id)
        out["lease_expires_at"] = int(lease) if lease is not None else None
        if with_history:
            out["history"] = self.history(job_id)
        return out

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """One entry per finished epoch, ordered by epoch (1-based ``epoch`` key in each entry)."""
        h = self.r.hgetall(keys.history(job_id))
        return [json.loads(v) for _, v in sorted(((int(k), v) for k, v in h.items()), key=lambda kv: kv[0])]

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
        return [json.loads(v) for v in self.r.lrange(keys.events(job_id), start, -1)]

    def list_ids(self, state: JobState | str | None = None, limit: int | None = None) -> list[str]:
        """Job ids, newest first; filtered by state through the state index."""
        if state is None:
            ids = self.r.zrevrange(keys.JOBS_INDEX, 0, -1 if limit is None else limit - 1)
            return [i.decode() for i in ids]
        members = {m.decode() for m in self.r.smembers(keys.state_index(JobState(state).value))}
        scores = self._scores(sorted(members))
        ids = sorted(members, key=lambda m: -scores.get(m, 0))
        return ids if limit is None else ids[:limit]

    def _scores(self, ids: list[str]) -> dict[str, float]:
        if not ids:
            return {}
        vals = self.r.zmscore(keys.JOBS_INDEX, ids)
        return {i: (v or 0.0) for i, v in zip(ids, vals)}

    def list(self, state: JobState | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Summaries (no spec, no history) of jobs, newest first; one round trip per 1000 jobs."""
        ids = self.list_ids(state, limit)
        out: list[dict[str, Any]] = []
        fields = ["id", "name", "state", "epoch", "epochs", "restarts", "best_epoch", "best_value",
                  "stopped_early", "worker", "created_at", "updated_at", "error"]
        for i in range(0, len(ids), 1000):
            pipe = self.r.pipeline(transaction=False)
            for jid in ids[i:i + 1000]:
                pipe.hmget(keys.job(jid), fields)
            for vals in pipe.execute():
                if vals[0] is None:
                    continue
                rec = {f: v.decode() for f, v in zip(fields, vals) if v is not None}
                out.append(parse_record(rec))
        return out


def parse_record(raw: dict[str, str]) -> dict[str, Any]:
    """Typed view of a job hash."""
    out: dict[str, Any] = dict(raw)
    for f in _INT_FIELDS:
        if f in out and out[f] != "":
            try:
                out[f] = int(float(out[f]))
            except ValueError:
                pass
    for f in _FLOAT_FIELDS:
        if f in out and out[f] != "":
            try:
                out[f] = float(out[f])
            except ValueError:
                pass
    for f in _JSON_FIELDS:
        if f in out:
            try:
                out[f] = json.loads(out[f])
            except (ValueError, TypeError, RecursionError):  # a corrupted field stays a string; never crash a read
                pass
    out["stopped_early"] = out.get("stopped_early") == "1"
    out["cancel_requested"] = out.get("cancel_requested") == "1"
    out.pop("token", None)  # a fencing token is a capability: never shown
    for f in ("epoch", "restarts", "preemptions"):
        out.setdefault(f, 0)
    for f in ("best_epoch", "best_value", "worker"):
        out.setdefault(f, None)
    return out


def iso_ms(ms: int) -> str:
    """ms since the epoch -> ``2026-11-28T06:32:15.123Z`` (what the Lua scripts write next to ms fields)."""
    import datetime as _dt

    t = _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
