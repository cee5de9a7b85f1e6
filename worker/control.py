"""How a running job is told to stop: cancel, preemption (SIGTERM) or fencing (lease lost)."""

from __future__ import annotations

import threading
from enum import Enum


class StopReason(str, Enum):
    CANCEL = "cancel"
    PREEMPT = "preempt"
    FENCED = "fenced"


class Interrupted(Exception):  # a control-flow signal, not an error
    """Raised from a batch boundary to leave ``model.fit`` at once (skipping the partial epoch's validation)."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class JobControl:
    """Thread-safe stop flag shared by the heartbeat thread, signal handlers and Keras callbacks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: StopReason | None = None
        self.preempted_for: str | None = None  # the waiting job a supervisor preempts this one for (None: SIGTERM)

    def request(self, reason: StopReason) -> None:
        with self._lock:
            # Fencing wins over everything: a fenced worker must not write, even a preemption checkpoint.
            if self._reason is None or reason is StopReason.FENCED:
                self._reason = reason

    def request_preempt(self, for_job: str | None) -> None:
        """A supervisor's preemption in favour of ``for_job``: stops exactly as a SIGTERM does."""
        with self._lock:
            if self._reason is None:
                self.preempted_for = for_job
        self.request(StopReason.PREEMPT)

    @property
    def reason(self) -> StopReason | None:
        return self._reason
