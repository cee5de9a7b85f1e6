"""Sweep and trial records in Redis, parsed once here into typed records; the status view the CLI and API show.

Keys (all under ``traind:``): ``sweeps`` (zset id -> created ms), ``sweeps:active`` (set of sweeps a controller
drives), ``sweep:<id>`` (hash: the sweep), ``sweep:<id>:trials`` (hash number -> trial JSON), ``sweep:<id>:optuna``
(prefix of the Optuna journal: the study itself), ``sweep:<id>:report_cpu`` (hash number -> CPU seconds its workers
spent reporting), ``sweeps:trial_jobs`` (hash job id -> ``<sweep id>:<number>`` of
a trial in flight: how its worker finds the study it reports to). No pydantic, numpy or Optuna here: status stays a
fast read.

>>> TrialRecord.parse(b'{"number": 3, "job": "j1", "state": "pruned", "pruned_at": 2}').pruned
True
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from jobs.contract import keys
from jobs.errors import JobNotFoundError, SpecError

SWEEPS = f"{keys.PREFIX}:sweeps"
ACTIVE = f"{keys.PREFIX}:sweeps:active"
CONTROLLER_LEASE = f"{keys.PREFIX}:sweeps:controller"
TRIAL_JOBS = f"{keys.PREFIX}:sweeps:trial_jobs"
MAX_TRIAL_JSON = 64 * 1024  # a trial record larger than this is malformed: shown as one bad row

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"
SWEEP_STATES = (RUNNING, SUCCEEDED, FAILED, CANCELLED)
# Trial states: the job's while it runs (queued, running, requeued), then how the trial ended.
TRIAL_DONE = ("succeeded", "pruned", "failed", "cancelled")


def sweep_key(sweep_id: str, part: str = "") -> str:
    """``traind:sweep:<id>`` (the sweep hash), ``...:trials`` (number -> trial JSON) or ``...:optuna`` (the prefix of
    its Optuna journal: ``<prefix>:log_number``, ``<prefix>:log:<n>``)."""
    return f"{keys.PREFIX}:sweep:{sweep_id}" + (f":{part}" if part else "")


def study_name(sweep_id: str) -> str:
    return f"traind-sweep-{sweep_id}"


def new_sweep_id() -> str:
    """Time-ordered and unguessable, like job ids (``s`` first: never mistaken for one)."""
    return f"s{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


@dataclass
class TrialRecord:
    """What a controller recorded about one trial (its job's live progress is read from the job)."""

    number: int
    job: str | None = None
    state: str = "queued"
    params: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    reported: int = 0  # the last epoch reported to the study
    pruned_at: int | None = None  # the epoch after which the pruner stopped it
    error: str | None = None
    finished_at: int | None = None  # ms, Redis clock

    @property
    def pruned(self) -> bool:
        return self.state == "pruned"

    @classmethod
    def parse(cls, raw: bytes) -> TrialRecord:
        """Raises ValueError for a record that is not one (the caller shows it as a bad row)."""
        if len(raw) > MAX_TRIAL_JSON:
            raise ValueError(f"trial record of {len(raw)} bytes")
        d = json.loads(raw)
        if not isinstance(d, dict) or not isinstance(d.get("number"), int):
            raise ValueError("trial record without an integer number")
        value = d.get("value")
        return cls(number=d["number"], job=_opt_str(d.get("job")), state=str(d.get("state", "queued")),
                   params=d["params"] if isinstance(d.get("params"), dict) else {},
                   value=float(value) if isinstance(value, (int, float)) else None,
                   reported=int(d.get("reported") or 0), pruned_at=_opt_int(d.get("pruned_at")),
                   error=_opt_str(d.get("error")), finished_at=_opt_int(d.get("finished_at")))

    def dump(self) -> str:
        d = asdict(self)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = None
        return json.dumps(d)


@dataclass
class SweepRecord:
    id: str
    name: str
    state: str
    sweep: dict[str, Any]  # the validated sweep spec (SweepSpec.model_dump)
    job: dict[str, Any]  # the validated job spec every trial starts from
    direction: str
    metric: str
    created_at: int
    finished_at: int | None = None
    cancel_requested: bool = False
    error: str | None = None
    owner: str | None = None  # who submitted it: its trials are that owner's jobs (fair share, limits, rights)

    @classmethod
    def parse(cls, sweep_id: str, raw: dict[bytes, bytes]) -> SweepRecord:
        d = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        try:
            return cls(id=sweep_id, name=d.get("name", ""), state=d.get("state", RUNNING),
                       sweep=json.loads(d["sweep"]), job=json.loads(d["job"]), direction=d.get("direction", "minimize"),
                       metric=d.get("metric", "val_loss"), created_at=int(d.get("created_at") or 0),
                       finished_at=_opt_int(d.get("finished_at")), cancel_requested=d.get("cancel_requested") == "1",
                       error=d.get("error") or None, owner=d.get("owner") or None)
        except (KeyError, ValueError, RecursionError) as e:
            raise ValueError(f"sweep {sweep_id}: malformed record ({type(e).__name__}: {e})") from e

    @property
    def trials_total(self) -> int:
        return int(self.sweep.get("trials", 0))

    @property
    def parallel(self) -> int:
        return int(self.sweep.get("parallel", 1))


def _opt_int(v: Any) -> int | None:
    try:
        return None if v in (None, "") else int(v)
    except (TypeError, ValueError):
        return None


def _opt_str(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


class SweepStore:
    """Reads and writes of sweep records (the controller owns trial records; the CLI/API only read them).

    >>> # SweepStore(redis.Redis()).get("s019ac...").state
    """

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def now_ms(self) -> int:
        sec, usec = self.r.time()
        return int(sec) * 1000 + int(usec) // 1000

    def create(self, sweep: dict[str, Any], job: dict[str, Any], direction: str, metric: str,
               owner: str | None = None) -> str:
        sweep_id = new_sweep_id()
        now = self.now_ms()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(sweep_key(sweep_id), mapping={
            "id": sweep_id, "name": str(sweep["name"]), "state": RUNNING, "sweep": json.dumps(sweep),
            "job": json.dumps(job), "direction": direction, "metric": metric, "created_at": now,
            **({"owner": owner} if owner else {})})
        pipe.zadd(SWEEPS, {sweep_id: now})
        pipe.sadd(ACTIVE, sweep_id)
        pipe.execute()
        return sweep_id

    def get(self, sweep_id: str) -> SweepRecord:
        raw = self.r.hgetall(sweep_key(sweep_id))
        if not raw:
            raise JobNotFoundError(f"sweep {sweep_id!r} not found")
        return SweepRecord.parse(sweep_id, raw)

    def resolve(self, ref: str) -> str:
        """The full id of a sweep from its id or a unique prefix."""
        if self.r.exists(sweep_key(ref)):
            return ref
        ids = [m.decode() for m in self.r.zrange(SWEEPS, 0, -1)]
        hits = [i for i in ids if i.startswith(ref)] if ref else []
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise JobNotFoundError(f"sweep {ref!r} not found")
        raise SpecError([f"sweep id prefix {ref!r} is ambiguous: {', '.join(hits[:10])}"])

    def ids(self, limit: int | None = None) -> list[str]:
        """Newest first."""
        return [m.decode() for m in self.r.zrevrange(SWEEPS, 0, -1 if limit is None else limit - 1)]

    def active(self) -> list[str]:
        return sorted(m.decode() for m in self.r.smembers(ACTIVE))

    def trials(self, sweep_id: str) -> tuple[dict[int, TrialRecord], list[str]]:
        """Trial records by number, and one line per malformed record (a bad row, never a crash)."""
        out: dict[int, TrialRecord] = {}
        bad: list[str] = []
        for k, v in self.r.hgetall(sweep_key(sweep_id, "trials")).items():
            try:
                rec = TrialRecord.parse(v)
                out[rec.number] = rec
            except (ValueError, TypeError, RecursionError) as e:
                bad.append(f"trial {k.decode(errors='replace')[:20]}: malformed record ({e})")
        return out, bad

    def put_trial(self, sweep_id: str, rec: TrialRecord) -> None:
        self.r.hset(sweep_key(sweep_id, "trials"), str(rec.number), rec.dump())

    def request_cancel(self, sweep_id: str) -> str:
        """Flag the sweep; its controller cancels the running trials at its next step. Returns the state."""
        rec = self.get(sweep_id)
        if rec.state == RUNNING:
            self.r.hset(sweep_key(sweep_id), "cancel_requested", "1")
        return rec.state

    def finish(self, sweep_id: str, state: str, error: str | None = None) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(sweep_key(sweep_id), mapping={"state": state, "finished_at": self.now_ms(), "error": error or ""})
        pipe.srem(ACTIVE, sweep_id)
        pipe.execute()


def link_trial(r: redis.Redis, job_id: str, sweep_id: str, number: int) -> None:
    """Tell the worker of ``job_id`` that it trains trial ``number`` of ``sweep_id`` (it reports its epochs to the
    study and asks the pruner itself, :mod:`jobs.sweep.reporter`); removed by :func:`unlink_trial` when it ends."""
    r.hset(TRIAL_JOBS, job_id, f"{sweep_id}:{int(number)}")


def unlink_trial(r: redis.Redis, job_id: str) -> None:
    r.hdel(TRIAL_JOBS, job_id)


def trial_of(r: redis.Redis, job_id: str) -> tuple[str, int] | None:
    """``(sweep id, trial number)`` when ``job_id`` is a trial in flight; None otherwise (or for a malformed link).

    >>> # trial_of(r, "j019ac...")   # ('s019ab...', 3)
    """
    raw = r.hget(TRIAL_JOBS, job_id)
    if raw is None or len(raw) > 200:
        return None
    sweep_id, _, number = raw.decode(errors="replace").rpartition(":")
    return (sweep_id, int(number)) if sweep_id and number.isdigit() else None


def best_of(trials: list[TrialRecord], direction: str) -> TrialRecord | None:
    """The finished trial with the best value (pruned trials compete with the value they were stopped at: no)."""
    done = [t for t in trials if t.state == "succeeded" and t.value is not None]
    if not done:
        return None
    return (max if direction == "maximize" else min)(done, key=lambda t: (t.value, -t.number))


def status(store: SweepStore, sweep_id: str) -> dict[str, Any]:
    """What ``traind sweep status --json`` prints and ``/api/v1/sweeps/<id>`` returns."""
    rec = store.get(sweep_id)
    trials, bad = store.trials(sweep_id)
    ordered = [trials[n] for n in sorted(trials)]
    fields = ["state", "epoch", "epochs", "restarts"]
    pipe = store.r.pipeline(transaction=False)
    for t in ordered:
        pipe.hmget(keys.job(t.job or "-"), fields)
    jobs = pipe.execute() if ordered else []
    rows = []
    for t, vals in zip(ordered, jobs):
        job = {f: (v.decode(errors="replace") if v is not None else None) for f, v in zip(fields, vals)}
        state = t.state
        if state not in TRIAL_DONE and job["state"] in ("queued", "running", "requeued"):
            state = job["state"]
        rows.append({"number": t.number, "job": t.job, "state": state, "params": t.params, "value": t.value,
                     "epochs_done": _opt_int(job["epoch"]) or 0, "epochs": _opt_int(job["epochs"]),
                     "restarts": _opt_int(job["restarts"]) or 0, "pruned": t.pruned, "pruned_at": t.pruned_at,
                     "reported": t.reported, "error": t.error, "finished_at": t.finished_at})
    best = best_of(ordered, rec.direction)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {
        "id": rec.id, "name": rec.name, "owner": rec.owner, "state": rec.state, "metric": rec.metric,
        "direction": rec.direction,
        "trials_total": rec.trials_total, "parallel": rec.parallel, "created_at": rec.created_at,
        "finished_at": rec.finished_at, "cancel_requested": rec.cancel_requested, "error": rec.error,
        "counts": counts, "trials": rows, "bad_records": bad,
        "best": None if best is None else {"number": best.number, "job": best.job, "value": best.value,
                                           "params": best.params},
        "best_over_time": best_over_time(ordered, rec.direction),
        "study": {"name": study_name(rec.id), "journal_prefix": sweep_key(rec.id, "optuna")},
    }


def best_over_time(trials: list[TrialRecord], direction: str) -> list[dict[str, Any]]:
    """``[{"t": finished_at ms, "value": best so far, "number": its trial}]``, one point per improvement."""
    out: list[dict[str, Any]] = []
    done = sorted((t for t in trials if t.state == "succeeded" and t.value is not None and t.finished_at),
                  key=lambda t: t.finished_at or 0)
    for t in done:
        assert t.value is not None
        if not out or (t.value > out[-1]["value"] if direction == "maximize" else t.value < out[-1]["value"]):
            out.append({"t": t.finished_at, "value": t.value, "number": t.number})
    return out


def summaries(store: SweepStore, limit: int | None = None) -> list[dict[str, Any]]:
    """One line per sweep (newest first): id, name, state, trials done/total, best value; a malformed sweep is a row
    with its error."""
    out = []
    for sid in store.ids(limit):
        try:
            st = status(store, sid)
        except (ValueError, JobNotFoundError) as e:
            out.append({"id": sid, "name": "?", "state": "malformed", "error": str(e)})
            continue
        done = sum(n for s, n in st["counts"].items() if s in TRIAL_DONE)
        out.append({k: st[k] for k in ("id", "name", "state", "metric", "direction", "trials_total", "parallel",
                                       "created_at", "counts")}
                   | {"trials_done": done, "best": st["best"]})
    return out
