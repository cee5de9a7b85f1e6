"""The attempt ledger: a job's record bound to one attempt and its fencing token, with typed fenced writes.

Everything a running attempt writes about its job goes through one :class:`AttemptLedger`: progress, the record of
each epoch (history + events), checkpoint commits, notes, lease renewals and the final transition. Every write is
fenced by the attempt's token (refused with :class:`jobs.errors.FencedError` once another attempt owns the job).

:class:`RedisLedger` writes through :class:`jobs.redis.store.JobStore`; :class:`MemoryLedger` keeps the same record
in dicts, so the attempt, checkpoint-policy and best-model logic run in unit tests without a redis-server.

>>> led = MemoryLedger("job1", attempt=1)
>>> led.note("hello")
>>> [e["msg"] for e in led.events()]
['hello']
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidatorFunctionWrapHandler, WrapValidator

from jobs.contract.events import EventKind, event
from jobs.contract.states import JobState
from jobs.errors import FencedError
from jobs.redis import packed
from jobs.redis.store import Beat, JobStore


def _lenient(v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Blank, "None" or unreadable: None (a hint the attempt can do without, never a crashed worker)."""
    if v in (None, "", "None"):
        return None
    try:
        return handler(v)
    except ValidationError:
        return None


_Key = Annotated[int | None, WrapValidator(_lenient)]


class AttemptRecord(BaseModel):
    """The fields of the job record an attempt starts from, parsed once from Redis' strings.

    >>> AttemptRecord.parse({"queue": "default", "best_ckpt_key": "3000000", "preempt_key": ""}).best_ckpt_key
    3000000
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    spec: str | None = None
    worker: str | None = None
    queue: str = ""
    preemptions: Annotated[int, WrapValidator(lambda v, h: _lenient(v, h) or 0)] = 0
    best_ckpt_key: _Key = None  # the checkpoint monitor's best epoch-end checkpoint
    preempt_key: _Key = None  # the checkpoint a preempted attempt saved to resume from
    ckpt_stall_s: Annotated[float, WrapValidator(lambda v, h: _lenient(v, h) or 0.0)] = 0.0  # earlier attempts'

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> AttemptRecord:
        return cls.model_validate(raw)


@dataclass
class Progress:
    """Mid-epoch progress: ``batch`` of ``steps`` batches done in 1-based ``running_epoch``."""

    batch: int
    steps: int
    running_epoch: int
    batch_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpochRecord:
    """What one finished (1-based) ``epoch`` adds to the job: its history ``entry``, job fields, events."""

    epoch: int
    metrics: dict[str, Any]
    entry: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None  # set when the checkpoint monitor improved this epoch
    improved: bool = False
    stopped_early: bool = False

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": self.epoch, "metrics": self.metrics, "batch": 0}
        if self.improved:
            out.update({"best_epoch": self.epoch, "best_value": self.best_value})
        if self.stopped_early:
            out["stopped_early"] = True
        return out


class AttemptLedger(ABC):
    """One attempt's view of its job record. Subclasses supply the fenced primitive and the reads."""

    def __init__(self, job_id: str, attempt: int, token: str) -> None:
        self.job_id, self.attempt, self.token = job_id, attempt, token

    # -- primitives ----------------------------------------------------------------------------------------------
    @abstractmethod
    def claim(self, worker_id: str, lease_ttl_ms: int) -> None:
        """Move the job to ``running`` under this attempt and token (the lease starts). Raises JobNotFoundError /
        IllegalTransitionError / FencedError / StalePrimaryError for a stale or duplicate message."""

    @abstractmethod
    def write(self, *, fields: dict[str, Any] | None = None, history_set: dict[int, dict[str, Any]] | None = None,
              history_del: Iterable[int] = (), ckpt_set: dict[int, dict[str, Any]] | None = None,
              ckpt_del: Iterable[int] = (), events: list[dict[str, Any]] | None = None) -> None:
        """One atomic write while this attempt's token owns the job; FencedError otherwise."""

    @abstractmethod
    def record(self) -> dict[str, Any]:
        """The job record as stored (field -> string)."""

    @abstractmethod
    def checkpoints(self) -> dict[int, dict[str, Any]]:
        """The committed checkpoint index: key -> manifest."""

    @abstractmethod
    def history(self) -> list[dict[str, Any]]:
        """The recorded epochs, in order."""

    @abstractmethod
    def history_entry(self, epoch: int) -> dict[str, Any] | None:
        """The recorded entry of 1-based ``epoch`` (None when not recorded)."""

    @abstractmethod
    def events(self, start: int = 0) -> list[dict[str, Any]]:
        """The job's events from index ``start`` (negative: from the end)."""

    @abstractmethod
    def renew(self, ttl_ms: int) -> tuple[bool, bool]:
        """Renew the lease: (still the owner, cancel requested)."""

    def beat(self, ttl_ms: int) -> Beat:
        """:meth:`renew`, with the preemption a supervisor requested (``preempt_for``: the job it is for)."""
        owner, cancel = self.renew(ttl_ms)
        return Beat(owner, cancel)

    @abstractmethod
    def end(self, state: JobState, msg: str, level: str = "info", fields: dict[str, Any] | None = None) -> None:
        """The final transition of this attempt (fenced by its token); FencedError / IllegalTransitionError."""

    @abstractmethod
    def requeue(self, queue: str, msg: str, fields: dict[str, Any], event_extra: dict[str, Any] | None = None) -> None:
        """Hand the job back as the next attempt (a graceful preemption); ``event_extra``: fields of its event."""

    @abstractmethod
    def warn_unfenced(self, msg: str) -> None:
        """A warning event that needs no ownership (cleanup on the way out)."""

    @abstractmethod
    def observe(self, name: str, value: float) -> None:
        """A telemetry sample (histogram ``name``)."""

    # -- typed writes --------------------------------------------------------------------------------------------
    def note(self, msg: str, level: str = "info", **extra: Any) -> None:
        self.write(events=[event(EventKind.NOTE, msg, level, **extra)])

    def progress(self, p: Progress) -> None:
        self.write(fields={"batch": p.batch, "steps": p.steps, "running_epoch": p.running_epoch,
                           "batch_metrics": p.batch_metrics})

    def begin(self, fields: dict[str, Any], *, history_del: list[int], ckpt_del: list[int],
              events: list[dict[str, Any]]) -> None:
        """The attempt's start: resume point, redone epochs' history and stale checkpoints dropped."""
        self.write(fields=fields, history_del=history_del, ckpt_del=ckpt_del, events=events)

    def epoch_end(self, rec: EpochRecord) -> None:
        self.write(fields=rec.fields(), history_set={rec.epoch: rec.entry}, events=rec.events)

    def commit_checkpoint(self, manifest: dict[str, Any], *, fields: dict[str, Any] | None = None,
                          events: list[dict[str, Any]] | None = None, delete: list[int] | None = None) -> None:
        self.write(ckpt_set={manifest["key"]: manifest}, fields=fields, events=events, ckpt_del=delete or [])


class RedisLedger(AttemptLedger):
    """The ledger in Redis, through :class:`JobStore` (its Lua scripts do the fencing)."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, token: str) -> None:
        super().__init__(job_id, attempt, token)
        self.store = store

    def claim(self, worker_id: str, lease_ttl_ms: int) -> None:
        self.store.transition(self.job_id, JobState.RUNNING, attempt=self.attempt, lease_ttl_ms=lease_ttl_ms,
                              fields={"token": self.token, "worker": worker_id, "cancel_requested": None,
                                      "error": None, "preempt_requested": None, "preempt_requested_at": None})

    def write(self, *, fields: dict[str, Any] | None = None, history_set: dict[int, dict[str, Any]] | None = None,
              history_del: Iterable[int] = (), ckpt_set: dict[int, dict[str, Any]] | None = None,
              ckpt_del: Iterable[int] = (), events: list[dict[str, Any]] | None = None) -> None:
        self.store.fenced_update(self.job_id, self.token, fields=fields, history_set=history_set,
                                 history_del=history_del, ckpt_set=ckpt_set, ckpt_del=ckpt_del, events=events)

    def record(self) -> dict[str, Any]:
        return self.store.raw(self.job_id)

    def checkpoints(self) -> dict[int, dict[str, Any]]:
        return self.store.checkpoints(self.job_id)

    def history(self) -> list[dict[str, Any]]:
        return self.store.history(self.job_id)

    def history_entry(self, epoch: int) -> dict[str, Any] | None:
        raw = packed.history_entry(self.store.r, self.job_id, epoch)
        return None if raw is None else json.loads(raw)  # type: ignore[arg-type]

    def events(self, start: int = 0) -> list[dict[str, Any]]:
        return self.store.events(self.job_id, start)

    def renew(self, ttl_ms: int) -> tuple[bool, bool]:
        return self.store.heartbeat(self.job_id, self.token, ttl_ms)

    def beat(self, ttl_ms: int) -> Beat:
        return self.store.beat(self.job_id, self.token, ttl_ms)

    def end(self, state: JobState, msg: str, level: str = "info", fields: dict[str, Any] | None = None) -> None:
        self.store.transition(self.job_id, state, token=self.token, fields=fields or {}, event_msg=msg, level=level)

    def requeue(self, queue: str, msg: str, fields: dict[str, Any], event_extra: dict[str, Any] | None = None) -> None:
        from jobs.redis import telemetry
        from jobs.redis.delivery import requeue

        requeue(self.store, self.job_id, attempt=self.attempt, token=self.token, queue=queue,
                kind=EventKind.PREEMPTED, fields=fields, msg=msg, event_extra=event_extra)
        telemetry.record_requeue(self.store.r, "preempted")

    def warn_unfenced(self, msg: str) -> None:
        self.store.add_event(self.job_id, EventKind.NOTE, msg, "warning")

    def observe(self, name: str, value: float) -> None:
        from jobs.redis import telemetry

        telemetry.observe(self.store.r, name, value)


class MemoryLedger(AttemptLedger):
    """The same record in memory, for unit tests of pure logic. :meth:`lose_lease` fences it off.

    ``fields`` are stored as given (no string encoding); ``final`` is the (state, msg, fields) of :meth:`end`.
    """

    def __init__(self, job_id: str = "job1", attempt: int = 1, token: str = "tok",
                 fields: dict[str, Any] | None = None) -> None:
        super().__init__(job_id, attempt, token)
        self.fields: dict[str, Any] = dict(fields or {})
        self.hist: dict[int, dict[str, Any]] = {}
        self.index: dict[int, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.owner = True
        self.cancel_requested = False
        self.preempt_for: str | None = None  # a supervisor's preemption request (the job it is for)
        self.final: tuple[JobState, str, dict[str, Any]] | None = None
        self.requeued: tuple[str, str, dict[str, Any]] | None = None
        self.requeued_extra: dict[str, Any] | None = None  # the requeue event's extra fields
        self.writes = 0
        self.samples: list[tuple[str, float]] = []

    def lose_lease(self) -> None:
        self.owner = False

    def claim(self, worker_id: str, lease_ttl_ms: int) -> None:
        self.owner = True
        self.fields.update({"state": JobState.RUNNING.value, "token": self.token, "worker": worker_id,
                            "attempt": self.attempt})

    def _fence(self) -> None:
        if not self.owner or self.final is not None or self.requeued is not None:
            raise FencedError(f"job {self.job_id}: no longer owned by attempt {self.attempt}")

    def write(self, *, fields: dict[str, Any] | None = None, history_set: dict[int, dict[str, Any]] | None = None,
              history_del: Iterable[int] = (), ckpt_set: dict[int, dict[str, Any]] | None = None,
              ckpt_del: Iterable[int] = (), events: list[dict[str, Any]] | None = None) -> None:
        self._fence()
        self.writes += 1
        for k, v in (fields or {}).items():
            if v is None:
                self.fields.pop(k, None)
            else:
                self.fields[k] = v
        for e in history_del:
            self.hist.pop(int(e), None)
        self.hist.update({int(e): dict(v) for e, v in (history_set or {}).items()})
        for k in ckpt_del:
            self.index.pop(int(k), None)
        self.index.update({int(k): dict(v) for k, v in (ckpt_set or {}).items()})
        self._log(events or [])

    def record(self) -> dict[str, Any]:
        return dict(self.fields)

    def checkpoints(self) -> dict[int, dict[str, Any]]:
        return {k: dict(v) for k, v in sorted(self.index.items())}

    def history(self) -> list[dict[str, Any]]:
        return [dict(self.hist[e]) for e in sorted(self.hist)]

    def history_entry(self, epoch: int) -> dict[str, Any] | None:
        return self.hist.get(epoch)

    def events(self, start: int = 0) -> list[dict[str, Any]]:
        return list(self.log[start:])

    def renew(self, ttl_ms: int) -> tuple[bool, bool]:
        return self.owner and self.final is None, self.cancel_requested

    def beat(self, ttl_ms: int) -> Beat:
        owner, cancel = self.renew(ttl_ms)
        return Beat(owner, cancel and owner, self.preempt_for if owner else None)

    def end(self, state: JobState, msg: str, level: str = "info", fields: dict[str, Any] | None = None) -> None:
        self._fence()
        self.final = (state, msg, dict(fields or {}))
        self._log([event(EventKind.NOTE, msg, level, state=state.value)])

    def requeue(self, queue: str, msg: str, fields: dict[str, Any], event_extra: dict[str, Any] | None = None) -> None:
        self._fence()
        self.requeued = (queue, msg, dict(fields))
        self.requeued_extra = event_extra

    def warn_unfenced(self, msg: str) -> None:
        self._log([event(EventKind.NOTE, msg, "warning")])

    def _log(self, events: list[dict[str, Any]]) -> None:
        now = int(time.time() * 1000)
        self.log.extend({**e, "ts": now} for e in events)  # Redis stamps each event as it stores it

    def observe(self, name: str, value: float) -> None:
        self.samples.append((name, value))
