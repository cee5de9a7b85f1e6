"""The supervisor's defence in depth against hangs: a running job whose lease is renewed but whose progress has not
moved for much longer than its worker's own progress timeout is handed back (the worker's watchdog may be what
hung).

Each pass reads, for every job holding a lease, its progress marker (attempt, epoch, running epoch, batch, and
``progress_seq``, a counter the worker's watchdog publishes every few seconds while any batch, validation too,
finishes) and the progress timeout its worker published (``progress_timeout_s``). :class:`StallTracker` remembers
when each marker was first seen (a supervisor that restarts starts counting again: a hang is only noticed later,
never wrongly); a job whose marker stayed the same for ``factor`` x that timeout plus ``grace_s`` is hung. The
state is in memory only: several supervisors each count, and the requeue is fenced by the attempt, so only one
hands a job back.

>>> t = StallTracker(factor=2.0, grace_s=30.0, default_timeout_s=600.0)
>>> t.observe("j1", (1, 0, 1, 40), timeout_s=60.0, now_s=0.0), t.observe("j1", (1, 0, 1, 40), 60.0, now_s=151.0)
(None, 151.0)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from jobs.contract import keys
from jobs.contract.records import to_int
from jobs.errors import FencedError, IllegalTransitionError, JobNotFoundError
from jobs.redis import lemons
from jobs.redis.hung import hand_back_hung
from jobs.redis.store import JobStore

log = logging.getLogger("traind.supervisor")

FIELDS = ["state", "attempt", "epoch", "running_epoch", "batch", "progress_timeout_s", "worker", "progress_seq"]
SCAN_LIMIT = 1000


@dataclass
class StallTracker:
    """When each job's progress marker was first seen; which jobs are stalled (see the module doc)."""

    factor: float = 2.0
    grace_s: float = 30.0
    default_timeout_s: float = 600.0
    _seen: dict[str, tuple[tuple[Any, ...], float]] = field(default_factory=dict)

    def observe(self, job_id: str, marker: tuple[Any, ...], timeout_s: float | None, now_s: float) -> float | None:
        """The seconds the job has been stuck when that is past its allowance, else None."""
        prev = self._seen.get(job_id)
        if prev is None or prev[0] != marker:
            self._seen[job_id] = (marker, now_s)
            return None
        stuck = now_s - prev[1]
        allowance = self.factor * (timeout_s if timeout_s and timeout_s > 0 else self.default_timeout_s) + self.grace_s
        return stuck if stuck > allowance else None

    def forget_except(self, live: set[str]) -> None:
        for job_id in [j for j in self._seen if j not in live]:
            del self._seen[job_id]


class ProgressWatch:
    """One supervisor's progress check: :meth:`step` once per pass."""

    def __init__(self, store: JobStore, tracker: StallTracker, policy: lemons.LemonPolicy) -> None:
        self.store, self.tracker, self.policy = store, tracker, policy

    def step(self, now_ms: int) -> list[str]:
        """Hand back every stalled job; the ids handed back."""
        r = self.store.r
        ids = [m.decode(errors="replace") for m in r.zrange(keys.LEASES, 0, SCAN_LIMIT - 1)]
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id), FIELDS)
        handed: list[str] = []
        for job_id, vals in zip(ids, pipe.execute(raise_on_error=False)):
            if isinstance(vals, Exception):  # a job key of the wrong type: one bad row (the lease pass reports it)
                continue
            v = {k: (x.decode(errors="replace") if x is not None else "") for k, x in zip(FIELDS, vals)}
            if v["state"] != "running":
                continue
            marker = (v["attempt"], v["epoch"], v["running_epoch"], v["batch"], v["progress_seq"])
            stuck = self.tracker.observe(job_id, marker, _float(v["progress_timeout_s"]), now_ms / 1000)
            if stuck is None:
                continue
            try:
                epoch = to_int(v["running_epoch"]) or to_int(v["epoch"]) + 1
                hand_back_hung(self.store, job_id, attempt=to_int(v["attempt"]), token=None,
                               epoch=epoch if v["batch"] not in ("", "0") else to_int(v["epoch"]),
                               batch=to_int(v["batch"]), silent_s=stuck, by="supervisor",
                               machine=lemons.machine_of_worker(r, v["worker"]), policy=self.policy)
                handed.append(job_id)
                log.error("job %s: progress stuck for %.0f s with its lease renewed; handed back", job_id, stuck)
            except (FencedError, IllegalTransitionError, JobNotFoundError, ValueError) as e:
                log.info("job %s: stall not handed back: %s", job_id, e)
        self.tracker.forget_except(set(ids))
        return handed


def _float(v: str) -> float | None:
    try:
        return float(v) if v else None
    except ValueError:
        return None
