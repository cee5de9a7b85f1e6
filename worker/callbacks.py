"""Keras callbacks that make a job resumable: EarlyStopping / ReduceLROnPlateau with exportable state, a
checkpoint-monitor tracker, batch-boundary control (cancel, preemption, fencing) and progress publishing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from worker import keras_compat
from worker.control import Interrupted, JobControl, StopReason


def _num(v: Any) -> Any:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else str(f)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping whose ``wait``/``best``/``best_weights`` survive a resume.

    Restoring best weights at the very end is left to the trainer: Keras would do it at the end of *every*
    ``fit`` call, and a resumed or preempted run is several calls.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self._pending is not None:
            st = self._pending
            self.wait, self.stopped_epoch = st["wait"], st["stopped_epoch"]
            self.best, self.best_epoch = st["best"], st["best_epoch"]
            self.best_weights = st.get("best_weights")

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        return None

    def get_state(self) -> dict[str, Any]:
        return {"wait": self.wait, "stopped_epoch": self.stopped_epoch, "best": _num(self.best),
                "best_epoch": int(self.best_epoch)}

    def set_state(self, state: dict[str, Any], best_weights: list[np.ndarray] | None) -> None:
        self._pending = {**state, "best_weights": best_weights}


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras' ReduceLROnPlateau whose ``wait``/``cooldown_counter``/``best`` survive a resume."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self._pending is not None:
            self.wait = self._pending["wait"]
            self.cooldown_counter = self._pending["cooldown_counter"]
            self.best = self._pending["best"]

    def get_state(self) -> dict[str, Any]:
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter, "best": _num(self.best)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._pending = dict(state)


class BestTracker:
    """ModelCheckpoint's notion of "improved" for the checkpoint monitor (same direction rules as Keras)."""

    def __init__(self, monitor: str, mode: str, initial_value_threshold: float | None) -> None:
        self._cb = keras_compat.monitor_callback(monitor, mode, initial_value_threshold)
        self.monitor = monitor
        self.best_epoch: int | None = None

    @property
    def best(self) -> float | None:
        return _num(self._cb.best)

    def observe(self, model: Any, epoch: int, logs: dict[str, Any]) -> tuple[bool, float | None, float | None]:
        """(improved, previous best, current) for 1-based ``epoch``."""
        self._cb.set_model(model)
        keras_compat.resolve_direction(self._cb)
        current = logs.get(self.monitor)
        if current is None:
            return False, self.best, None
        prev = self.best
        if keras_compat.is_improvement(self._cb, current, self._cb.best):
            self._cb.best = float(current)
            self.best_epoch = epoch
            return True, prev, float(current)
        return False, prev, float(current)

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def set_state(self, st: dict[str, Any]) -> None:
        self._cb.best = st.get("best")
        self.best_epoch = st.get("best_epoch")


class ControlCallback(keras.callbacks.Callback):
    """At each batch boundary: publish progress (throttled) and leave fit at once if asked to stop."""

    def __init__(self, control: JobControl, on_stop: Callable[[int, int], None],
                 on_progress: Callable[[int, int, dict[str, Any]], None], progress_interval_s: float,
                 batch_offset: int = 0, steps: int | None = None) -> None:
        super().__init__()
        self.control, self.on_stop, self.on_progress = control, on_stop, on_progress
        self.progress_interval_s = progress_interval_s
        self.batch_offset = batch_offset  # batches of this epoch trained before a preemption
        self.steps = steps  # known epoch length: a stop on the last batch lets the epoch end (and checkpoint)
        self.epoch = 0
        self.batches_done = 0
        self._last = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch
        self.batches_done = self.batch_offset
        self.batch_offset = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches_done += 1
        last_batch = self.steps is not None and self.batches_done >= self.steps
        reason = self.control.reason
        if reason is not None and (not last_batch or reason is StopReason.FENCED):
            self.on_stop(self.epoch, self.batches_done)
            raise Interrupted(self.control.reason)
        now = time.monotonic()
        if now - self._last >= self.progress_interval_s:  # 0: every batch
            self._last = now
            self.on_progress(self.epoch, self.batches_done, logs or {})


class EpochEndCallback(keras.callbacks.Callback):
    """Runs last at each epoch end (after EarlyStopping/ReduceLROnPlateau updated their state)."""

    def __init__(self, on_epoch: Callable[[int, dict[str, Any]], None]) -> None:
        super().__init__()
        self.on_epoch = on_epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.on_epoch(epoch, dict(logs or {}))


class RestoreMetricsCallback(keras.callbacks.Callback):
    """For the first (partial) epoch after a mid-epoch preemption: add back the metric accumulators of the
    batches trained before it, so the epoch's logged loss/metrics cover the whole epoch as in an uninterrupted run.

    Added after the first batch because Keras builds compile metrics lazily in the first train step; Keras'
    metric states (totals, counts, confusion counts) are sums, so adding them is exact.
    """

    def __init__(self, values: list[np.ndarray]) -> None:
        super().__init__()
        self.values: list[np.ndarray] | None = values

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.values is None:
            return
        variables = self.model.metrics_variables
        if len(variables) == len(self.values):
            for v, a in zip(variables, self.values):
                if tuple(v.shape) == tuple(a.shape):
                    v.assign(v.numpy() + a)
        self.values = None


def clean_logs(logs: dict[str, Any]) -> dict[str, Any]:
    return {k: _num(v) for k, v in logs.items()}
