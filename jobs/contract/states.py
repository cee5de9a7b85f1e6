"""Job states and the one table of allowed transitions.

The transition itself is performed atomically in Redis by :func:`jobs.redis.store.JobStore.transition`;
this module is pure data so that both the client and the Lua scripts use the same table.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """Lifecycle of a training job.

    >>> JobState("running").is_terminal
    False
    """

    QUEUED = "queued"
    RUNNING = "running"
    REQUEUED = "requeued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    def __str__(self) -> str:
        return self.value


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# from-state -> allowed to-states. Early stopping is a successful end (``stopped_early`` flag), not a state.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.REQUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.REQUEUED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

# `traind retry`: an operator runs a failed or cancelled job again as a new attempt (-> requeued). Never in the
# table above, so no automatic path (a supervisor's requeue, a late worker) can revive a finished job.
RETRYABLE: frozenset[JobState] = frozenset({JobState.FAILED, JobState.CANCELLED})


def allowed_sources(target: JobState) -> list[str]:
    """States from which ``target`` may be entered (what the Lua transition checks)."""
    return sorted(s.value for s, tos in TRANSITIONS.items() if target in tos)


def can_transition(src: JobState, dst: JobState) -> bool:
    """True when the table allows ``src -> dst``."""
    return dst in TRANSITIONS[src]
