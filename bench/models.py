"""Builders and loaders the benchmarks submit (``bench.models:...``; the benchmarks add ``bench`` to the allowlist).

Keras is imported lazily so that the benchmark drivers can build specs without loading TensorFlow.

>>> x, y = regression_data(n=10, dim=3)
>>> x.shape, y.shape
((10, 3), (10, 1))
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


def regression_data(n: int = 2000, dim: int = 4, noise: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``t = x @ w + noise`` with ``dim`` features (float32): val_loss plateaus at the noise floor."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    w = rng.normal(size=(dim, 1)).astype("float32")
    t = (x @ w / np.sqrt(dim) + 0.7 + noise * rng.normal(size=(n, 1))).astype("float32")
    return x, t


def mlp(dim: int = 4, units: int = 64, depth: int = 2, learning_rate: float = 1e-3) -> Any:
    """A ``dim -> units x depth -> 1`` ReLU MLP compiled with Adam / MSE / MAE."""
    import keras

    layers: list[Any] = [keras.Input((dim,))]
    layers += [keras.layers.Dense(units, activation="relu") for _ in range(depth)]
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers, name="bench_mlp")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"])
    return model


def param_count(dim: int, units: int, depth: int) -> int:
    """Trainable parameters of :func:`mlp` (and :func:`big_dense`) with these arguments."""
    n, prev = 0, dim
    for _ in range(depth):
        n += prev * units + units
        prev = units
    return n + prev + 1


def big_dense(dim: int = 1024, units: int = 4500, depth: int = 2, learning_rate: float = 1e-5) -> Any:
    """A wide Dense stack (default 24.9M float32 parameters: ~100 MB of weights, ~300 MB with Adam's moments)."""
    return mlp(dim=dim, units=units, depth=depth, learning_rate=learning_rate)


@lru_cache(maxsize=1)
def _slow_class() -> type:
    import keras
    import tensorflow as tf

    def _sleep(seconds: Any) -> Any:
        time.sleep(float(seconds))
        return np.int32(0)

    class SlowSequential(keras.Sequential):
        """Each training batch also sleeps ``batch_delay_s`` (a ``tf.py_function`` inside the compiled step):
        epochs of a predictable length at little CPU."""

        batch_delay_s: float = 0.0

        def train_step(self, data: Any) -> Any:
            if self.batch_delay_s > 0:
                tf.py_function(_sleep, [tf.constant(self.batch_delay_s)], tf.int32)  # stateful: always runs
            return super().train_step(data)

    return SlowSequential


def slow_dense(dim: int = 1024, units: int = 4500, depth: int = 2, batch_delay_s: float = 0.0,
               learning_rate: float = 1e-5) -> Any:
    """:func:`big_dense` whose every training batch also sleeps ``batch_delay_s``: an epoch of a chosen length that
    leaves the CPU free, as device compute does on a GPU (the checkpoint-at-scale benchmark's long rows)."""
    import keras

    layers: list[Any] = [keras.Input((dim,))]
    layers += [keras.layers.Dense(units, activation="relu") for _ in range(depth)]
    layers.append(keras.layers.Dense(1))
    model = _slow_class()(layers, name="bench_slow_dense")
    model.batch_delay_s = float(batch_delay_s)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"])
    return model


def slow_mlp(dim: int = 4, units: int = 16, batch_delay_s: float = 0.05, learning_rate: float = 1e-2) -> Any:
    """A small MLP whose every training batch takes at least ``batch_delay_s`` (it sleeps: light on CPU)."""
    import keras

    cls = _slow_class()
    model = cls([keras.Input((dim,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(1)],
                name="bench_slow_mlp")
    model.batch_delay_s = float(batch_delay_s)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"])
    return model


def _first_here(marker: str) -> bool:
    """True for the first process that creates ``marker`` (exclusive creation)."""
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


@lru_cache(maxsize=1)
def _paced_class() -> type:
    import keras
    import tensorflow as tf

    class PacedSequential(keras.Sequential):
        """Each training batch sleeps ``batch_delay_s``; at optimizer step ``hang_at_step`` the first process to get
        there (an O_EXCL marker file) blocks for good, as a deadlocked loader or a stuck collective would."""

        batch_delay_s: float = 0.0
        hang_at_step: int = -1
        hang_marker: str = ""

        def _hook(self, step: Any) -> None:
            if int(step) == self.hang_at_step and self.hang_marker and _first_here(self.hang_marker):
                threading.Event().wait()  # never set: blocked for good
            if self.batch_delay_s > 0:
                time.sleep(self.batch_delay_s)

        def train_step(self, data: Any) -> Any:
            tf.py_function(self._hook, [self.optimizer.iterations], [])
            return super().train_step(data)

    return PacedSequential


def paced_mlp(dim: int = 4, units: int = 16, batch_delay_s: float = 0.05, hang_at_step: int = -1,
              hang_marker: str = "", learning_rate: float = 1e-2) -> Any:
    """A small MLP whose every batch sleeps ``batch_delay_s`` (light on CPU) and that may hang once (see above)."""
    import keras

    model = _paced_class()([keras.Input((dim,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(1)],
                           name="bench_paced_mlp")
    model.batch_delay_s, model.hang_at_step, model.hang_marker = float(batch_delay_s), hang_at_step, hang_marker
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"], jit_compile=False)
    return model


def regression_dataset(n: int = 2000, dim: int = 4, batch_size: int = 32, shuffle_buffer: int = 256) -> Any:
    """:func:`regression_data` as a shuffled, batched ``tf.data.Dataset`` (train) and a batched one (validation)."""
    import tensorflow as tf

    x, t = regression_data(n=n, dim=dim)
    split = int(n * 0.8)
    train = tf.data.Dataset.from_tensor_slices((x[:split], t[:split])).shuffle(shuffle_buffer).batch(batch_size)
    val = tf.data.Dataset.from_tensor_slices((x[split:], t[split:])).batch(batch_size)
    return train.prefetch(2), val
