"""How an attempt ends, recorded once: the one owner of an attempt's final state.

Training can end inside ``model.fit`` (Keras' ``on_train_end``: the job succeeds before fit tears down its input
pipeline), after fit returns, or by an error. Whoever learns it first calls :meth:`Ending.record` (or
:meth:`Ending.fail`); the first outcome is written through the :class:`worker.ledger.AttemptLedger`, later ones
are ignored, so a job is never finished twice.

>>> from worker.ledger import MemoryLedger
>>> led = MemoryLedger()
>>> end = Ending(led, worker_id="w1", queue="default", preemptions=0)
>>> end.record(Outcome(None, {"final_checkpoint": {"file": "final.keras"}}, "training finished"))
>>> end.record(Outcome(StopReason.CANCEL, {}, "cancelled"))  # ignored: the job already succeeded
>>> led.final[0].value
'succeeded'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.contract.states import JobState
from jobs.errors import FencedError, IllegalTransitionError
from worker.control import JobControl, StopReason
from worker.ledger import AttemptLedger

log = logging.getLogger("traind.worker")


@dataclass
class Outcome:
    """How training ended: ``reason`` None when training finished (the job succeeded), else why it stopped.

    ``fields`` and ``event`` go into the final transition; ``preempt_key`` is the committed checkpoint a
    preempted attempt resumes from (None when it stopped at an epoch end and resumes from the latest one).
    """

    reason: StopReason | None
    fields: dict[str, Any] = field(default_factory=dict)
    event: str = ""
    preempt_key: int | None = None
    epochs_done: int = 0


class Ending:
    """Records an attempt's final state exactly once.

    ``before_success`` runs just before a success is written (the attempt stops its heartbeat: the lease ends
    with the job, and no beat may find it gone).
    """

    def __init__(self, ledger: AttemptLedger, *, worker_id: str, queue: str, preemptions: int,
                 before_success: Callable[[], None] | None = None, control: JobControl | None = None) -> None:
        self.ledger, self.worker_id, self.queue, self.preemptions = ledger, worker_id, queue, preemptions
        self.control = control  # says which job a supervisor's preemption was for
        self.before_success = before_success
        self.outcome: Outcome | None = None  # the recorded outcome (None: not ended yet)
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def record(self, outcome: Outcome) -> None:
        """Write how training ended (succeeded, cancelled, requeued after a preemption; nothing when fenced)."""
        if self._ended:
            return
        self._ended, self.outcome = True, outcome
        if outcome.reason is None:
            if self.before_success is not None:
                self.before_success()
            self._final(JobState.SUCCEEDED, outcome.event, fields=outcome.fields)
        elif outcome.reason is StopReason.CANCEL:
            self._final(JobState.CANCELLED, outcome.event)
        elif outcome.reason is StopReason.PREEMPT:
            self._requeue(outcome.preempt_key)
        else:
            log.warning("job %s attempt %s fenced off; abandoned without writing", self.ledger.job_id,
                        self.ledger.attempt)

    def fail(self, msg: str, **fields: Any) -> None:
        """The job failed (its own fault: no retry); ignored once the attempt has ended."""
        if self._ended:
            return
        self._ended = True
        self._final(JobState.FAILED, msg, "error", fields=fields)

    def _final(self, state: JobState, msg: str, level: str = "info", *, fields: dict[str, Any] | None = None) -> None:
        try:
            self.ledger.end(state, msg, level, fields)
        except (FencedError, IllegalTransitionError) as e:
            log.warning("job %s: final state %s not recorded: %s", self.ledger.job_id, state.value, e)

    def _requeue(self, preempt_key: int | None) -> None:
        """Graceful preemption: hand the job back now (no waiting for the lease) to resume from its checkpoint."""
        by = self.control.preempted_for if self.control is not None else None
        why = f"preempted for job {by} on worker {self.worker_id}" if by else f"preempted on worker {self.worker_id}"
        fields: dict[str, Any] = {"preemptions": self.preemptions + 1, "reason": why,
                                  "preempt_requested": None, "preempt_requested_at": None}
        if by:
            fields["preempted_for"] = by
        if preempt_key is not None:
            fields["preempt_key"] = preempt_key
        try:
            self.ledger.requeue(self.queue, f"{why}; requeued as attempt {self.ledger.attempt + 1}", fields,
                                event_extra={"by": by} if by else None)
        except (FencedError, IllegalTransitionError) as e:
            log.warning("job %s: preemption requeue refused: %s", self.ledger.job_id, e)
