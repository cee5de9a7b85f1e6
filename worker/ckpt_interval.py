"""The default interval of time-based step checkpoints: Young/Daly's ``sqrt(2 x stall x MTBF)``.

A checkpoint every ``T`` seconds costs ``stall / T`` of the training time (the part of each checkpoint the training
thread waits for: the host copy, and the previous write when it is still running); a failure costs on average
``T / 2`` of redone work. Young (1974) and Daly (2006) showed that ``T = sqrt(2 x stall x MTBF)`` minimises the sum
for a mean time between failures ``MTBF``. The interval is clamped: never below ``min_s`` (a checkpoint more often
than failures can be noticed buys nothing), never below ``stall / max_overhead`` (the steady-state cost stays under
``max_overhead``, 1 %), never above ``max_s`` (a failure never redoes more than that).

The stall is measured, not guessed: each checkpoint reports how long it held the training thread, and the interval
follows the median of the last ``window`` ones (Young/Daly's cost is the typical checkpoint's: a one-off slow one,
such as the first, which also traces TensorFlow's save functions, does not stretch the interval). Before the first
measurement the interval is ``min_s``, so the first checkpoint comes early and measures the stall.

>>> p = IntervalPolicy(mtbf_s=3600.0, min_s=5.0, max_s=600.0)
>>> p.interval_s()
5.0
>>> p.observe_stall(0.05); round(p.interval_s(), 1)   # sqrt(2 x 0.05 x 3600)
19.0
>>> p.observe_stall(8.0); p.observe_stall(8.0); p.interval_s()  # typically 8 s: 1 % allows one every 800 s; capped
600.0
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field


def young_daly_s(stall_s: float, mtbf_s: float) -> float:
    """Young/Daly's optimal checkpoint interval for a checkpoint costing ``stall_s`` and failures every ``mtbf_s``.

    >>> young_daly_s(0.5, 3600.0)
    60.0
    """
    return math.sqrt(2.0 * max(stall_s, 0.0) * mtbf_s)


@dataclass
class IntervalPolicy:
    """When the next time-based step checkpoint is due, from the measured checkpoint stall (see the module doc)."""

    mtbf_s: float = 3600.0
    min_s: float = 5.0
    max_s: float = 600.0
    max_overhead: float = 0.01
    window: int = 8
    _stalls: deque[float] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.min_s <= self.max_s):
            raise ValueError(f"checkpoint interval bounds: expected 0 < min_s <= max_s, received {self.min_s}, "
                             f"{self.max_s}")
        if self.mtbf_s <= 0 or not (0 < self.max_overhead < 1) or self.window < 1:
            raise ValueError("mtbf_s must be > 0, max_overhead in (0, 1), window >= 1")
        self._stalls = deque(maxlen=self.window)

    def observe_stall(self, stall_s: float) -> None:
        """One checkpoint held the training thread ``stall_s`` seconds."""
        if math.isfinite(stall_s) and stall_s >= 0:
            self._stalls.append(stall_s)

    @property
    def stall_s(self) -> float | None:
        """The stall the interval is computed from (the median of the recent ones), None before any measurement."""
        return statistics.median(self._stalls) if self._stalls else None

    def interval_s(self) -> float:
        """Seconds between two step checkpoints."""
        stall = self.stall_s
        if stall is None:
            return self.min_s
        t = max(young_daly_s(stall, self.mtbf_s), stall / self.max_overhead, self.min_s)
        return min(t, self.max_s)

    def due(self, last_save_s: float, now_s: float) -> bool:
        """Whether a checkpoint is due ``now_s`` when the last one was taken at ``last_save_s`` (same clock).

        >>> IntervalPolicy(min_s=5.0).due(10.0, 14.0), IntervalPolicy(min_s=5.0).due(10.0, 15.0)
        (False, True)
        """
        return now_s - last_save_s >= self.interval_s()

    def expected_overhead(self) -> float | None:
        """The steady-state fraction of training time spent in checkpoint stalls at this interval."""
        stall = self.stall_s
        return None if stall is None else stall / self.interval_s()
