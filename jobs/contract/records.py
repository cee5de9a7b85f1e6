"""Typed records, parsed once where they are read from Redis: a job's status hash, a worker's registry hash, an
event. Everything inside traind uses their fields; :meth:`to_dict` gives the JSON shape the API and CLI print.

A malformed value never breaks a reader: it becomes ``None`` (or the field's default), its name and the bad value go
to ``problems``, the JSON form carries ``"problems": [...]`` (the row is marked, not dropped), and the first sighting
is logged once per process (:func:`log_problems`).

>>> rec = JobRecord.parse({"id": "ab12", "state": "running", "epoch": "inf", "epochs": "10"})
>>> rec.epoch, rec.epochs, rec.problems
(0, 10, ('epoch: not an integer: inf',))
>>> to_int(b"7"), to_int("1e400"), to_int(None, 3)
(7, 0, 3)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

log = logging.getLogger("traind.records")

_LOGGED: set[str] = set()
_LOGGED_MAX = 10_000  # a flood of distinct bad records logs this many, then stays quiet


def to_int(v: Any, default: int = 0) -> int:
    """``v`` (bytes, text or a number) as an int; ``default`` for anything that is not a finite number.

    The one integer reader of Redis values outside the worker (``1e3`` reads as 1000: Lua writes some counts as
    floats). Never raises: NaN, inf and 10**400 as text are all ``default``.
    """
    try:
        return _strict_int(v)
    except (TypeError, ValueError, OverflowError):
        return default


def _strict_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, bytes):
        v = v.decode()
    f = float(v)  # ValueError on junk, OverflowError never (inf is a float)
    if not math.isfinite(f):
        raise ValueError(f"not finite: {v!r}")
    return int(f)


def _strict_float(v: Any) -> float:
    f = float(v.decode() if isinstance(v, bytes) else v)
    if not math.isfinite(f):  # NaN/Infinity are no JSON a browser reads
        raise ValueError(f"not finite: {v!r}")
    return f


def _text(v: Any) -> tuple[str, bool]:
    """(text, was it valid UTF-8)."""
    if isinstance(v, bytes):
        try:
            return v.decode(), True
        except UnicodeDecodeError:
            return v.decode(errors="replace"), False
    return str(v), True


def decode_hash(raw: Mapping[Any, Any]) -> tuple[dict[str, str], list[str]]:
    """A Redis hash reply as text; non-UTF-8 names or values are replaced (U+FFFD) and reported."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for k, v in raw.items():
        if v is None:
            continue
        name, ok_k = _text(k)
        text, ok_v = _text(v)
        if not (ok_k and ok_v):
            problems.append(f"{name}: not UTF-8")
        out[name] = text
    return out, problems


def log_problems(what: str, problems: tuple[str, ...] | list[str]) -> None:
    """Log a bad record once per process (a reader that polls must not log it every second)."""
    if not problems:
        return
    key = f"{what}|{'|'.join(problems)}"[:500]
    if key in _LOGGED or len(_LOGGED) >= _LOGGED_MAX:
        return
    _LOGGED.add(key)
    log.warning("%s: malformed record, shown with the bad fields empty: %s", what, "; ".join(problems)[:1000])


def _numbers(text: dict[str, str], ints: tuple[str, ...], floats: tuple[str, ...], problems: list[str]
             ) -> dict[str, Any]:
    """The ``ints`` and ``floats`` fields of a decoded hash that read as finite numbers; the others go to
    ``problems`` (an empty value counts as absent)."""
    out: dict[str, Any] = {}
    for names, conv, what in ((ints, _strict_int, "an integer"), (floats, _strict_float, "a number")):
        for f in names:
            if text.get(f, "") != "":
                try:
                    out[f] = conv(text[f])
                except (ValueError, OverflowError):
                    problems.append(f"{f}: not {what}: {text[f][:40]}")
    return out


# -- jobs ----------------------------------------------------------------------------------------------------------
_JOB_INT = (
    "epoch", "epochs", "restarts", "preemptions", "attempt", "max_restarts", "best_epoch", "created_at",
    "updated_at", "started_at", "finished_at", "batch", "steps", "resume_epoch", "running_epoch",
)
_JOB_FLOAT = ("best_value",)
_JOB_JSON = ("metrics", "spec", "worker_info", "best_checkpoint", "final_checkpoint", "latest_checkpoint",
             "batch_metrics")
_JOB_FLAGS = ("stopped_early", "cancel_requested")
_JOB_DEFAULTS: dict[str, Any] = {"epoch": 0, "restarts": 0, "preemptions": 0, "best_epoch": None, "best_value": None,
                                 "worker": None}
_HIDDEN = ("token", "client_key", "goodput_recorded", "notify_urls")  # a fencing token is a capability; the
# idempotency key is the submitter's; goodput_recorded is the once-only marker of the fleet counters, set after the
# job ends; notify_urls are the alert URLs with their secrets (the spec shows them masked: jobs/alerts/urls.py)


@dataclass(frozen=True)
class JobRecord:
    """A job's status hash (``traind:job:<id>``), typed. Fields absent from the hash are ``None`` (``epoch``,
    ``restarts``, ``preemptions`` 0); text fields the record does not name stay in ``extra``.

    >>> JobRecord.parse({"state": "queued", "attempt": "2"}).attempt
    2
    """

    id: str = ""
    name: str | None = None
    state: str | None = None
    queue: str | None = None
    worker: str | None = None
    error: str | None = None
    resume_from: str | None = None
    owner: str | None = None
    epoch: int = 0
    epochs: int | None = None
    restarts: int = 0
    preemptions: int = 0
    attempt: int | None = None
    max_restarts: int | None = None
    best_epoch: int | None = None
    created_at: int | None = None
    updated_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    batch: int | None = None
    steps: int | None = None
    resume_epoch: int | None = None
    running_epoch: int | None = None
    best_value: float | None = None
    stopped_early: bool = False
    cancel_requested: bool = False
    # JSON objects; a field that is not one keeps its text (listed in problems)
    metrics: dict[str, Any] | str | None = None
    spec: dict[str, Any] | str | None = None
    worker_info: dict[str, Any] | str | None = None
    best_checkpoint: dict[str, Any] | str | None = None
    final_checkpoint: dict[str, Any] | str | None = None
    latest_checkpoint: dict[str, Any] | str | None = None
    batch_metrics: dict[str, Any] | str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    present: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[Any, Any], job_id: str | None = None) -> JobRecord:
        """Parse a hash reply (bytes or text keys/values). Never raises for any content."""
        text, problems = decode_hash(raw)
        kw = _numbers(text, _JOB_INT, _JOB_FLOAT, problems)
        for f in _JOB_JSON:
            if f in text:
                try:
                    value = json.loads(text[f])
                except (ValueError, RecursionError):
                    value = None
                if isinstance(value, dict) or (value is None and text[f] == "null"):
                    kw[f] = value
                else:
                    kw[f] = text[f]  # a corrupted field stays its text, as always
                    problems.append(f"{f}: not a JSON object")
        for f in _JOB_FLAGS:
            kw[f] = text.get(f) == "1"
        for f in ("name", "state", "queue", "worker", "error", "resume_from", "owner"):
            if f in text:
                kw[f] = text[f]
        known = set(_JOB_INT) | set(_JOB_FLOAT) | set(_JOB_JSON) | set(_JOB_FLAGS) | set(kw) | {"id"}
        extra = {k: v for k, v in text.items() if k not in known and k not in _HIDDEN}
        jid = job_id if job_id is not None else text.get("id", "")
        return cls(id=jid, extra=extra, present=frozenset(text) - set(_HIDDEN), problems=tuple(problems),
                   **{k: v for k, v in kw.items() if v is not None})

    @property
    def exists(self) -> bool:
        """False for an empty hash (a deleted or never created job)."""
        return bool(self.present)

    def to_dict(self) -> dict[str, Any]:
        """The status as the API and ``traind status --json`` print it: the hash's fields (typed; an unreadable one
        empty), ``epoch``/``restarts``/``preemptions``/``best_*``/``worker`` always, ``problems`` when any."""
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name in ("extra", "present", "problems"):
                continue
            if f.name in self.present or f.name in _JOB_FLAGS:
                out[f.name] = getattr(self, f.name)
        for f, default in _JOB_DEFAULTS.items():
            out.setdefault(f, default)
        for f in _JOB_INT + _JOB_FLOAT:  # a present but unreadable number is shown empty, never as junk text
            if f in self.present and any(p.startswith(f"{f}:") for p in self.problems):
                out[f] = _JOB_DEFAULTS.get(f)
        if self.problems:
            out["problems"] = list(self.problems)
        return out

    @property
    def monitor(self) -> str:
        """The checkpoint monitor (what ``best_value`` measures); ``val_loss`` when the spec names none."""
        return spec_monitor(self.spec)


def spec_monitor(spec: Any) -> str:
    """The checkpoint monitor a stored spec names, ``val_loss`` (the spec's default) when it names none or is no spec.

    >>> spec_monitor({"checkpoint": {"monitor": "val_acc"}}), spec_monitor("junk")
    ('val_acc', 'val_loss')
    """
    if isinstance(spec, dict) and isinstance(spec.get("checkpoint"), dict):
        m = spec["checkpoint"].get("monitor")
        if isinstance(m, str) and m:
            return m
    return "val_loss"


# -- workers -------------------------------------------------------------------------------------------------------
_WORKER_INT = ("pid", "jobs_done", "seen", "devices")
_WORKER_FLOAT = ("rss_mb", "cpu_percent", "gpu_mem_mb")


@dataclass(frozen=True)
class WorkerRecord:
    """A worker's registry hash (``traind:worker:<id>``), typed.

    >>> WorkerRecord.parse("w1", {b"pid": b"abc", b"host": b"h"}).to_dict(now_ms=0)["pid"] is None
    True
    """

    id: str
    host: str | None = None
    device: str | None = None
    job: str | None = None
    pid: int | None = None
    jobs_done: int | None = None
    seen: int | None = None
    devices: int | None = None
    rss_mb: float | None = None
    cpu_percent: float | None = None
    gpu_mem_mb: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    present: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, worker_id: str, raw: Mapping[Any, Any]) -> WorkerRecord:
        text, problems = decode_hash(raw)
        kw = _numbers(text, _WORKER_INT, _WORKER_FLOAT, problems)
        for f in ("host", "device", "job"):
            if f in text:
                kw[f] = text[f]
        known = set(_WORKER_INT) | set(_WORKER_FLOAT) | {"host", "device", "job", "id"}
        return cls(id=worker_id, extra={k: v for k, v in text.items() if k not in known}, present=frozenset(text),
                   problems=tuple(problems), **kw)

    def heartbeat_age_s(self, now_ms: int) -> float:
        """Seconds since its last heartbeat; 0 when it never reported one (or reported junk)."""
        return round((now_ms - (self.seen if self.seen is not None else now_ms)) / 1000, 3)

    def to_dict(self, now_ms: int) -> dict[str, Any]:
        """What ``traind workers --json`` and ``/api/v1/workers`` print."""
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name not in ("extra", "present", "problems", "id") and f.name in self.present:
                out[f.name] = getattr(self, f.name)
        out["id"] = self.id
        out.setdefault("job", None)
        out.setdefault("gpu_mem_mb", None)
        out["heartbeat_age_s"] = self.heartbeat_age_s(now_ms)
        if self.problems:
            out["problems"] = list(self.problems)
        return out


# -- events --------------------------------------------------------------------------------------------------------
def parse_event(raw: bytes | str, where: str = "event") -> dict[str, Any]:
    """One event-log entry as a JSON object whose ``ts`` is an integer (ms) and ``msg``/``level``/``kind`` text.

    An entry that is not a JSON object becomes a marked ``note`` saying so; a bad ``ts`` becomes 0 (shown as "-"),
    so one bad entry never hides the others (the dashboard sorts by ``ts``).

    >>> parse_event(b'{"kind": "note", "msg": "hi", "ts": "abc"}')["ts"]
    0
    >>> parse_event(b"not json")["problems"]
    ['not a JSON object']
    """
    text, ok = _text(raw)
    try:
        ev = json.loads(text)
    except (ValueError, RecursionError):
        ev = None
    if not isinstance(ev, dict):
        problems = ["not a JSON object"]
        log_problems(where, problems)
        return {"kind": "note", "level": "error", "msg": f"unreadable event: {text[:200]}", "ts": 0,
                "problems": problems}
    problems = [] if ok else ["not UTF-8"]
    ts = ev.get("ts")
    if not (isinstance(ts, int) and not isinstance(ts, bool)):
        ev["ts"] = to_int(ts) if isinstance(ts, (float, str)) and _finite_text(ts) else 0
        problems.append(f"ts: not an integer: {str(ts)[:40]}")
    for f in ("msg", "level", "kind"):
        if f in ev and not isinstance(ev[f], str):
            ev[f] = json.dumps(ev[f], default=str)[:200]
            problems.append(f"{f}: not text")
    if problems:
        log_problems(where, problems)
        ev["problems"] = problems
    return ev


def _finite_text(v: Any) -> bool:
    try:
        return math.isfinite(float(v)) and abs(float(v)) < 2**63
    except (TypeError, ValueError, OverflowError):
        return False
