"""Training state that survives a resume: EarlyStopping / ReduceLROnPlateau with exportable state (held together
by :class:`Plateau`), the checkpoint monitor's tracker, and the metric accumulators of a partial epoch.

Progress reporting is :mod:`worker.progress`'s, checkpointing :mod:`worker.checkpointing`'s.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from jobs.contract.events import EventKind, event
from jobs.contract.spec import JobSpec
from worker import keras_compat


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


class Plateau:
    """The attempt's EarlyStopping and ReduceLROnPlateau (each optional), their state across resumes and fit calls,
    and what they did at an epoch end (an early stop, a reduced learning rate)."""

    def __init__(self, spec: JobSpec) -> None:
        self.es = ResumableEarlyStopping(**spec.early_stopping.model_dump()) if spec.early_stopping else None
        self.rlrop = ResumableReduceLROnPlateau(**spec.lr_on_plateau.model_dump()) if spec.lr_on_plateau else None

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [cb for cb in (self.es, self.rlrop) if cb is not None]

    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = {}
        if self.es is not None:
            st["es"] = self.es.get_state()
        if self.rlrop is not None:
            st["rlrop"] = self.rlrop.get_state()
        return st

    def restore(self, st: dict[str, Any], weights: list[np.ndarray], es_best_weights: list[np.ndarray] | None
                ) -> None:
        """From a checkpoint's manifest state (``weights``: the checkpoint's own, when ES' best was that epoch)."""
        if self.es is not None and "es" in st:
            best_w = es_best_weights if es_best_weights is not None else (
                list(weights) if st.get("es_best_is_current") else None)
            self.es.set_state(st["es"], best_w)
        if self.rlrop is not None and "rlrop" in st:
            self.rlrop.set_state(st["rlrop"])

    def carry(self) -> None:
        """Between two fit calls (after a partial epoch), keep callback state: fit's on_train_begin resets it."""
        if self.es is not None:
            self.es.set_state(self.es.get_state(), self.es.best_weights)
        if self.rlrop is not None:
            self.rlrop.set_state(self.rlrop.get_state())

    def snapshot_best_weights(self, epoch: int, mid_epoch: bool, state: dict[str, Any]) -> list[np.ndarray] | None:
        """EarlyStopping's best weights for a snapshot of ``epoch``; None (flagged in ``state``) when they are the
        snapshot's own weights: the same weights are not stored twice."""
        es = self.es
        if es is None or es.best_weights is None:
            return None
        if es.best_epoch + 1 == epoch and not mid_epoch:
            state["es_best_is_current"] = True
            return None
        return es.best_weights  # type: ignore[no-any-return]

    def stopping(self, epoch0: int, model: Any) -> bool:
        """EarlyStopping ended training at this (0-based) epoch."""
        es = self.es
        return es is not None and es.stopped_epoch == epoch0 and epoch0 > 0 and bool(model.stop_training)

    @property
    def stopped_early(self) -> bool:
        return bool(self.es is not None and self.es.stopped_epoch > 0)

    def epoch_events(self, e: int, old_lr: float | None, new_lr: float | None, stopping: bool
                     ) -> list[dict[str, Any]]:
        """Events for 1-based epoch ``e``: the learning rate reduced, an early stop."""
        out: list[dict[str, Any]] = []
        if self.rlrop is not None and old_lr is not None and new_lr is not None and new_lr < old_lr * (1 - 1e-6):
            out.append(event(EventKind.LR_REDUCED, f"epoch {e}: learning rate reduced from {fmt_num(old_lr)} to "
                             f"{fmt_num(new_lr)}", epoch=e))
        if stopping and self.es is not None:
            out.append(event(EventKind.EARLY_STOP, f"early stop at epoch {e} (best {self.es.monitor} "
                             f"{fmt_num(_f(self.es.best))} at epoch {self.es.best_epoch + 1})", epoch=e))
        return out

    def restore_best(self, model: Any) -> str:
        """At the job's end, restore_best_weights: the weights of the best epoch; a note for the final event."""
        es = self.es
        if es is not None and es.restore_best_weights and es.best_weights is not None:
            model.set_weights(es.best_weights)
            return f"; restored weights of best epoch {es.best_epoch + 1}"
        return ""


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


def fmt_num(v: float | None) -> str:
    return "none" if v is None else f"{v:.6g}"


def learning_rate(model: Any) -> float | None:
    try:
        return float(np.asarray(model.optimizer.learning_rate))
    except (TypeError, ValueError, AttributeError):
        return None


def _f(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
