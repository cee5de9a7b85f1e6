"""When an attempt counts as hung: the progress watchdog's decision, pure, over an injected clock.

Every finished batch (training or validation) is a sign of life. The timeout is derived from the job's own recent
batch times: ``factor`` times their 95th percentile, never below ``floor_s`` (a minute: a checkpoint write or a slow
epoch end is not a hang). Until the first batch of each kind (training, then validation at the first epoch end) the
allowance is ``first_batch_s`` instead, for imports, tracing, compilation and the data pipeline's warm-up. An explicit
``timeout_s`` (per job or per worker) replaces the derived one, for the batches and the first batch alike.

>>> clock = ProgressClock(WatchdogConfig(floor_s=60.0, first_batch_s=600.0), now=0.0)
>>> clock.check(now=599.0) is None, clock.check(now=601.0).reason
(True, 'no first batch within 600 s')
>>> clock.batch(now=601.0, epoch=1, batch=1); clock.batch(now=602.0, epoch=1, batch=2)
>>> clock.timeout_s(), clock.check(now=661.0) is None, clock.check(now=663.0).batch
(60.0, True, 2)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WatchdogConfig:
    """The watchdog's settings: ``timeout_s`` explicit (None: derived), ``factor`` x recent p95 batch time with a
    ``floor_s``, ``first_batch_s`` before the first batch of each kind, over the last ``window`` batch times."""

    timeout_s: float | None = None
    factor: float = 20.0
    floor_s: float = 60.0
    first_batch_s: float = 600.0
    window: int = 200

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"progress timeout: expected seconds > 0, received {self.timeout_s}")
        if self.factor <= 1 or self.floor_s <= 0 or self.first_batch_s <= 0 or self.window < 1:
            raise ValueError("watchdog: factor must be > 1, floor_s and first_batch_s > 0, window >= 1")


@dataclass(frozen=True)
class Hang:
    """A hang: nothing finished for ``silent_s`` > ``timeout_s``; the last batch finished was ``batch`` of
    ``epoch`` (1-based; 0: none yet in this attempt)."""

    epoch: int
    batch: int
    silent_s: float
    timeout_s: float
    reason: str


@dataclass
class ProgressClock:
    """The state the watchdog decides from: the last sign of life and the recent batch times."""

    config: WatchdogConfig
    now: float
    epoch: int = 0
    batch_no: int = 0
    _last: float = field(init=False)
    _times: deque[float] = field(init=False, repr=False)
    _seen: set[str] = field(init=False, repr=False)
    _expecting: str = field(init=False, default="train")

    def __post_init__(self) -> None:
        self._last = self.now
        self._times = deque(maxlen=self.config.window)
        self._seen = set()

    def batch(self, *, now: float, epoch: int, batch: int, kind: str = "train") -> None:
        """A batch of ``kind`` (``train``/``test``) finished; ``epoch``/``batch`` name the last training batch."""
        if kind in self._seen:
            self._times.append(max(now - self._last, 0.0))
        self._seen.add(kind)
        self._last = now
        if kind == "train":
            self.epoch, self.batch_no = epoch, batch
        self._expecting = kind

    def expect(self, kind: str, *, now: float) -> None:
        """The next sign of life will be a batch of ``kind`` (validation starts, a new epoch starts): its first one
        gets the first-batch allowance; the phase change itself is a sign of life."""
        self._expecting = kind
        self._last = now

    def timeout_s(self) -> float:
        """The current timeout: explicit, the first-batch allowance, or ``factor`` x p95 with its floor."""
        c = self.config
        if c.timeout_s is not None:
            return c.timeout_s
        if self._expecting not in self._seen:
            return c.first_batch_s
        times = sorted(self._times)
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))] if times else 0.0  # nearest rank
        return max(c.floor_s, c.factor * p95)

    def check(self, *, now: float) -> Hang | None:
        """A :class:`Hang` when nothing finished for longer than the timeout, else None."""
        timeout = self.timeout_s()
        silent = now - self._last
        if silent <= timeout:
            return None
        if self._expecting not in self._seen:
            what = "first batch" if self._expecting == "train" else "first validation batch"
            reason = f"no {what} within {timeout:.0f} s"
        else:
            reason = f"no batch finished for {silent:.0f} s (timeout {timeout:.0f} s)"
        return Hang(self.epoch, self.batch_no, silent, timeout, reason)
