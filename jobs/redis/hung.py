"""A hung attempt handed back: the one place that records a ``hung`` event and requeues the job (or fails it after
``max_restarts``), whoever noticed the hang: the worker's own watchdog (fenced by the attempt's token) or a
supervisor that saw the lease renewed but the progress stuck (fenced by the attempt number).

The machine the attempt hung on gets a lemon failure (:mod:`jobs.redis.lemons`).

>>> # hand_back_hung(store, job_id, attempt=2, token=tok, epoch=1, batch=40, silent_s=61.0, by="watchdog",
>>> #               machine="host/gpu:0", policy=LemonPolicy(), stacks=dump)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from jobs.contract.events import EventKind
from jobs.contract.records import to_int
from jobs.contract.states import JobState
from jobs.errors import IllegalTransitionError
from jobs.redis import lemons, telemetry
from jobs.redis.badput import record_finished
from jobs.redis.delivery import requeue
from jobs.redis.store import JobStore

log = logging.getLogger("traind.hung")


@dataclass(frozen=True)
class Handed:
    """What became of the job: ``requeued`` (as ``attempt + 1``) or ``failed``; ``drained`` when this hang drained
    the machine."""

    outcome: str
    drained: bool


def hand_back_hung(store: JobStore, job_id: str, *, attempt: int, token: str | None, epoch: int, batch: int,
                   silent_s: float, by: str, machine: str | None, policy: lemons.LemonPolicy,
                   stacks: str = "") -> Handed:
    """Record the hang and requeue the job at once (or fail it: ``restarts`` would pass ``max_restarts``).

    Raises FencedError / IllegalTransitionError / JobNotFoundError when the attempt is no longer the job's (it
    finished, or someone else handed it back first): nothing is written then but the lemon failure.
    """
    raw = store.raw(job_id)
    if raw.get("state") != JobState.RUNNING.value or to_int(raw.get("attempt")) != attempt:
        raise IllegalTransitionError(f"job {job_id} attempt {attempt} is no longer running")
    restarts, max_restarts = to_int(raw.get("restarts")), to_int(raw.get("max_restarts"), 3)
    worker = raw.get("worker") or "?"
    where = f"epoch {epoch} batch {batch}" if epoch else "before its first batch"
    what = f"attempt {attempt} hung at {where}: no batch finished for {silent_s:.0f} s (noticed by the {by})"
    fields = {"epoch": epoch, "batch": batch, "silent_s": round(silent_s, 3), "by": by, "worker": worker,
              "attempt": attempt, "stacks": stacks[-32_000:]}
    store.add_event(job_id, EventKind.HUNG, what, "error", **fields)
    drained = False
    if machine:
        drained = lemons.record_failure(store.r, machine, kind="hung", job_id=job_id, now_ms=store.now_ms(),
                                        policy=policy)
        if drained:
            log.error("machine %s drained: repeated hangs or losses", machine)
    if restarts + 1 > max_restarts:
        error = f"hung {restarts + 1} times (max_restarts={max_restarts}); last: {what}"
        store.transition(job_id, JobState.FAILED, attempt=attempt, token=token,
                         fields={"error": error, "reason": "hung"}, event_msg=f"failed: {error}", level="error")
        record_finished(store, job_id)
        return Handed("failed", drained)
    requeue(store, job_id, attempt=attempt, token=token, queue=raw["queue"], kind=EventKind.REQUEUED,
            fields={"restarts": restarts + 1, "reason": f"hung on worker {worker}"},
            msg=f"{what}; requeued as attempt {attempt + 1} (restart {restarts + 1}/{max_restarts})")
    telemetry.record_requeue(store.r, "hung", detection_s=silent_s)
    return Handed("requeued", drained)

