"""Progress of a running attempt, one Keras callback per concern: leaving fit at a batch boundary when asked to stop
(:class:`StopCallback`), publishing the batch position (:class:`ProgressCallback`), recording each finished epoch
(:class:`EpochRecorder`). All writes go through the attempt's :class:`worker.ledger.AttemptLedger`.

>>> # cbs = [StopCallback(control, ckpt.before_stop), ProgressCallback(ledger, control, 1.0, steps), ...,
>>> #        EpochRecorder(ledger, tracker, plateau, best, epochs=10)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import keras

from jobs.contract.events import EventKind, event
from jobs.errors import FencedError
from jobs.keras.best_model import BestModel
from worker.callbacks import BestTracker, Plateau, clean_logs, fmt_num, learning_rate
from worker.control import Interrupted, JobControl, StopReason
from worker.ledger import AttemptLedger, EpochRecord, Progress


class BatchCounter(keras.callbacks.Callback):
    """Counts the batches done in the current epoch; ``batch_offset``: batches of the first epoch trained before
    this fit call (by an earlier attempt, before a preemption)."""

    def __init__(self, batch_offset: int = 0) -> None:
        super().__init__()
        self.batch_offset = batch_offset
        self.epoch = 0
        self.batches_done = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch
        self.batches_done = self.batch_offset
        self.batch_offset = 0


class StopCallback(BatchCounter):
    """At each batch boundary: leave fit at once (raise Interrupted) if the job was asked to stop; ``before_stop``
    (epoch0, batches_done) runs first (a preemption's mid-epoch checkpoint). A stop on the last batch of an epoch
    of known length ``steps`` lets the epoch end (and checkpoint) instead; fencing never waits."""

    def __init__(self, control: JobControl, before_stop: Callable[[int, int], None], batch_offset: int = 0,
                 steps: int | None = None) -> None:
        super().__init__(batch_offset)
        self.control, self.before_stop, self.steps = control, before_stop, steps

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches_done += 1
        last_batch = self.steps is not None and self.batches_done >= self.steps
        reason = self.control.reason
        if reason is not None and (not last_batch or reason is StopReason.FENCED):
            self.before_stop(self.epoch, self.batches_done)
            raise Interrupted(self.control.reason)


class ProgressCallback(BatchCounter):
    """Publishes the batch position and batch metrics, at most every ``interval_s`` (0: every batch).

    ``listeners`` see every published :class:`worker.ledger.Progress` (after it is written). A fenced write asks
    the job to stop instead of raising.
    """

    def __init__(self, ledger: AttemptLedger, control: JobControl, interval_s: float, steps: int | None,
                 batch_offset: int = 0, listeners: Sequence[Callable[[Progress], None]] = ()) -> None:
        super().__init__(batch_offset)
        self.ledger, self.control, self.interval_s, self.steps = ledger, control, interval_s, steps
        self.listeners = list(listeners)
        self._last = 0.0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches_done += 1
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self.publish(Progress(self.batches_done, self.steps or 0, self.epoch + 1, clean_logs(logs or {})))

    def publish(self, p: Progress) -> None:
        try:
            self.ledger.progress(p)
        except FencedError:
            self.control.request(StopReason.FENCED)
            return
        for listener in self.listeners:
            listener(p)


class EpochRecorder(keras.callbacks.Callback):
    """Records each finished epoch: history entry, metrics, the checkpoint monitor's verdict (and ``best``), the
    learning rate reduced, an early stop. Runs after EarlyStopping / ReduceLROnPlateau updated their state.

    ``last`` is the latest epoch's record (the checkpoint callback's save decision reads it); ``epochs_done`` the
    epochs completed by this job so far; ``stop_after_epoch`` is set by an early stop.
    """

    def __init__(self, ledger: AttemptLedger, tracker: BestTracker, plateau: Plateau, best: BestModel,
                 epochs_done: int = 0) -> None:
        super().__init__()
        self.ledger, self.tracker, self.plateau, self.best = ledger, tracker, plateau, best
        self.epochs_done = epochs_done
        self.stop_after_epoch = False
        self.last: EpochRecord | None = None
        self.epoch_started = time.monotonic()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        e = epoch + 1
        self.epochs_done = e
        metrics = clean_logs(logs)
        metrics.setdefault("learning_rate", learning_rate(self.model))
        improved, prev, cur = self.tracker.observe(self.model, e, logs)
        # No export on the training thread: the best (and latest) model is the epoch's resumable checkpoint,
        # recorded as a lazy export when its background write commits; files are written when the job finishes.
        events = [self._verdict(e, improved, prev, cur, logs)]
        stopping = self.plateau.stopping(epoch, self.model)
        if stopping:
            self.stop_after_epoch = True
        events += self.plateau.epoch_events(e, metrics.get("learning_rate"), learning_rate(self.model), stopping)
        entry = {"epoch": e, **metrics, "time_s": round(time.monotonic() - self.epoch_started, 4)}
        self.epoch_started = time.monotonic()
        rec = EpochRecord(e, metrics, entry, events, best_value=cur if improved else None, improved=improved,
                          stopped_early=stopping)
        self.ledger.epoch_end(rec)
        self.last = rec
        if improved:
            self.best.improved(e)

    def _verdict(self, e: int, improved: bool, prev: float | None, cur: float | None, logs: dict[str, Any]
                 ) -> dict[str, Any]:
        mon = self.tracker.monitor
        if improved:
            frm = "" if prev is None else f" from {fmt_num(prev)}"
            return event(EventKind.EPOCH, f"epoch {e}: {mon} improved{frm} to {fmt_num(cur)}; checkpointing it as "
                         "the best model", epoch=e, improved=True)
        if cur is None:
            return event(EventKind.EPOCH, f"epoch {e}: {mon} not in logs ({', '.join(sorted(logs))}); not compared",
                         "warning", epoch=e, improved=False)
        return event(EventKind.EPOCH, f"epoch {e}: {mon} did not improve from {fmt_num(prev)} ({fmt_num(cur)})",
                     epoch=e, improved=False)
