"""Snapshots of the resumable state, taken on the training thread into host buffers reused from one to the next.

>>> # snaps = Snapshotter(tracker, plateau); snap = snaps.take(model, epoch=3, batch=0, metrics={}, mid_epoch=False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from worker.callbacks import BestTracker, Plateau, learning_rate
from worker.checkpoint import Snapshot


class Snapshotter:
    """Takes a :class:`Snapshot` of a model and the attempt's callback state (checkpoint monitor, EarlyStopping,
    ReduceLROnPlateau, learning rate)."""

    def __init__(self, tracker: BestTracker, plateau: Plateau,
                 data_position: Callable[[bool], bytes | None] | None = None) -> None:
        self.tracker, self.plateau = tracker, plateau
        self.host = HostBuffers()
        # A Dataset job's position (worker.data_resume), taken with the model's state: (mid_epoch) -> bytes
        self.data_position = data_position

    def state(self, model: Any) -> dict[str, Any]:
        return {"tracker": self.tracker.get_state(), **self.plateau.state(), "learning_rate": learning_rate(model)}

    def take(self, model: Any, epoch: int, batch: int, metrics: dict[str, Any], mid_epoch: bool) -> Snapshot:
        # Into the reused host buffers: the previous snapshot's write is done (Checkpoints.offer waits for it first)
        weights = self.host.copy("w", model.weights)
        optimizer = self.host.copy("o", model.optimizer.variables)
        state = self.state(model)
        es_best = self.plateau.snapshot_best_weights(epoch, mid_epoch, state)
        return Snapshot(
            epoch=epoch, batch=batch, weights=weights,
            optimizer=optimizer, state=state, metrics=metrics, es_best_weights=es_best,
            metric_vars=[v.numpy() for v in model.metrics_variables] if mid_epoch else None,
            data=None if self.data_position is None else self.data_position(mid_epoch),
        )


def host_copy(model: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The bare device-to-host copy of the resumable state into fresh arrays, as ``model.get_weights()`` makes it:
    (weights, optimizer variables). The benchmarks' reference for :class:`HostBuffers`."""
    return model.get_weights(), [v.numpy() for v in model.optimizer.variables]


class HostBuffers:
    """Host arrays reused from one snapshot to the next: the only checkpoint work on the training thread is one copy
    of each variable into memory that is already mapped.

    A fresh copy (``get_weights()``) allocates the whole state again each time, and on a VM first-touching that
    memory costs more than the copy (here 5-7 s for 300 MB against 0.13-0.23 s into warm buffers). At most one
    snapshot is in flight (:meth:`worker.checkpoint.Checkpoints.offer` waits for the previous write before the next
    copy), so one set of buffers suffices: one host copy of the state per job, held for its life.
    """

    def __init__(self) -> None:
        self._pool: dict[tuple[str, int], np.ndarray] = {}

    def copy(self, group: str, variables: Any) -> list[np.ndarray]:
        out = []
        for i, v in enumerate(variables):
            buf = self._pool.get((group, i))
            shape, dtype = tuple(v.shape), np.dtype(v.dtype)
            if buf is None or buf.shape != shape or buf.dtype != dtype:
                buf = self._pool[(group, i)] = np.empty(shape, dtype)
            np.copyto(buf, _host_view(v))
            out.append(buf)
        return out


def _host_view(v: Any) -> Any:
    """The variable's current value without an extra copy where possible: a DLPack view of a CPU tensor (one copy,
    into the buffer, follows); from a GPU, the device-to-host copy itself."""
    value = getattr(v, "value", v)
    try:
        import tensorflow as tf

        t = tf.convert_to_tensor(value)
        if "GPU" not in (t.device or "").upper():
            return np.from_dlpack(t)
        return t.numpy()
    except Exception:  # noqa: BLE001 - another backend or an older TensorFlow: the plain copy
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v)
