"""A job's event log entries: a structured ``kind`` for programs, a ``msg`` for people.

Tests, benchmarks and tools select events by ``kind`` (and the fields next to it), never by parsing ``msg``.

>>> event(EventKind.EPOCH, "epoch 3: val_loss improved to 0.1", epoch=3)["kind"]
'epoch'
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from jobs.contract.states import JobState


class EventKind(str, Enum):
    """What happened. Every event a traind component writes has one."""

    SUBMITTED = "submitted"  # the job was created
    CANCEL_REQUESTED = "cancel_requested"  # a running job was flagged; it stops at its next batch boundary
    CLAIMED = "claimed"  # a worker took an attempt (state -> running)
    TRAINING = "training"  # the attempt starts fitting (after choosing its resume point): fields attempt, epoch
    RESUMED = "resumed"  # a checkpoint was restored: fields epoch, batch, file
    SKIPPED_CHECKPOINT = "skipped_checkpoint"  # a checkpoint failed verification and was passed over
    NO_CHECKPOINT = "no_checkpoint"  # checkpoints existed but none was valid: training starts from scratch
    EPOCH = "epoch"  # an epoch finished: fields epoch, improved
    LR_REDUCED = "lr_reduced"  # ReduceLROnPlateau lowered the learning rate
    EARLY_STOP = "early_stop"  # EarlyStopping ended training
    CHECKPOINT = "checkpoint"  # a mid-epoch (preemption) checkpoint was committed: fields epoch, batch
    PREEMPTED = "preempted"  # graceful preemption: requeued by its own worker
    PREEMPT_REQUESTED = "preempt_requested"  # a supervisor asked a running job to yield: fields by / victim, priority
    REQUEUED = "requeued"  # the worker was lost (lease expired): requeued by a supervisor
    HUNG = "hung"  # no batch finished past the progress timeout: fields epoch, batch, silent_s, by, stacks
    DATA_RESUMED = "data_resumed"  # a Dataset resumed mid-epoch: fields how (iterator/skip), batch
    REDELIVERED = "redelivered"  # the queue message was lost and enqueued again
    RETRIED = "retried"  # an operator ran a failed or cancelled job again (``traind retry``)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NOTE = "note"  # anything else (operators, tests)
    ALERT_SENT = "alert_sent"  # a supervisor sent an alert: fields alert, target (redacted), tries
    ALERT_FAILED = "alert_failed"  # a supervisor gave up on an alert: fields alert, target (redacted), tries, error

    def __str__(self) -> str:
        return self.value


# The kind a transition's event gets when its caller names none.
_BY_STATE = {
    JobState.RUNNING: EventKind.CLAIMED,
    JobState.REQUEUED: EventKind.REQUEUED,
    JobState.SUCCEEDED: EventKind.SUCCEEDED,
    JobState.FAILED: EventKind.FAILED,
    JobState.CANCELLED: EventKind.CANCELLED,
    JobState.QUEUED: EventKind.SUBMITTED,
}


def kind_for_state(state: JobState) -> EventKind:
    """The default event kind of a transition into ``state``."""
    return _BY_STATE[JobState(state)]


def event(kind: EventKind, msg: str, level: str = "info", **extra: Any) -> dict[str, Any]:
    """An event record (Redis adds ``ts``)."""
    return {"kind": EventKind(kind).value, "msg": msg, "level": level, **extra}
