"""Builders and loaders that the test suite's jobs reference (``tests.models:...``, on the test allowlist).

They exist to make faults reproducible from inside a real worker process:

* :func:`slow_regression` - a tiny MLP whose every batch sleeps ``batch_delay_s`` (a ``tf.py_function`` hook in
  ``train_step`` runs Python at every step), making an epoch last long enough (~0.3-1 s) for a kill sent from the
  outside to land mid-epoch. Sleeping costs no CPU, so epoch length barely depends on how loaded the 2 cores are.
  ``kill_at_epoch`` makes the worker SIGKILL itself at that epoch, on every attempt (the trigger is the optimizer's
  step counter, which a resumed attempt restores from its checkpoint, so it reaches the same step again).
  ``pause_in_validation_of_epoch`` makes the first worker to validate that epoch SIGSTOP itself once (a frozen
  process that wakes up after its lease ran out, at the worst moment: just before its end-of-epoch writes).
* :func:`raising_builder` / :func:`raising_loader` - user code that raises (the job must fail once, no retry).
* :func:`load_data` - the regression data of :mod:`examples.regression`, small.

Keras is imported lazily: the pytest process imports this module to build specs without paying for TensorFlow.

>>> spec_model = {"builder": "tests.models:slow_regression", "builder_kwargs": {"batch_delay_s": 0.02}}
"""

from __future__ import annotations

import os
import signal
import time
from functools import lru_cache
from typing import Any

import numpy as np

from examples.regression import load_data as _regression_data


def load_data(n: int = 600, noise: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``examples.regression.load_data`` with a test-sized default (600 samples of 4 features)."""
    return _regression_data(n=n, noise=noise, seed=seed)


def raising_loader(message: str = "loader exploded on purpose") -> Any:
    """A data loader that always raises (a user bug)."""
    raise ValueError(message)


def raising_builder(message: str = "builder exploded on purpose") -> Any:
    """A model builder that always raises ValueError (a user bug: the job must fail at once, without retries)."""
    raise ValueError(message)


@lru_cache(maxsize=1)
def _slow_model_class() -> type:
    """The Sequential subclass with the per-batch hook (defined on first use: it needs Keras)."""
    import keras
    import tensorflow as tf

    class SlowSequential(keras.Sequential):
        """``keras.Sequential`` whose ``train_step`` sleeps per batch and may SIGKILL its own process."""

        batch_delay_s: float = 0.0
        kill_at_step: int = -1  # 0-based optimizer step at which the process kills itself; -1: never

        def _hook(self, step: Any) -> None:
            if int(step) == self.kill_at_step:
                # A hard crash of the whole worker (OOM killer, segfault in a native op): no cleanup runs.
                os.kill(os.getpid(), signal.SIGKILL)
            if self.batch_delay_s > 0:
                time.sleep(self.batch_delay_s)

        def train_step(self, data: Any) -> Any:
            # py_function runs the Python hook at every step of the compiled train function (a plain Python call
            # would run once, while tracing); it is stateful, so TF keeps it in the graph and before the update.
            tf.py_function(self._hook, [self.optimizer.iterations], [])
            return super().train_step(data)

        pause_at_step: int = -1  # optimizer step during whose validation the process SIGSTOPs itself, once
        pause_marker: str = ""

        def _pause_hook(self, step: Any) -> None:
            if int(step) != self.pause_at_step or not self.pause_marker:
                return
            try:  # O_EXCL: only the first process to get here pauses (a resumed attempt elsewhere must not)
                fd = os.open(self.pause_marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            # Frozen (a GC pause, a VM migration) after the epoch's last batch, before its end-of-epoch writes.
            os.kill(os.getpid(), signal.SIGSTOP)

        def test_step(self, data: Any) -> Any:
            tf.py_function(self._pause_hook, [self.optimizer.iterations], [])
            return super().test_step(data)

    return SlowSequential


def slow_regression(
    units: int = 8,
    learning_rate: float = 0.01,
    batch_delay_s: float = 0.03,
    kill_at_epoch: int = 0,
    kill_after_batches: int = 1,
    steps_per_epoch: int = 0,
    pause_in_validation_of_epoch: int = 0,
    pause_marker: str = "",
) -> Any:
    """A compiled 4 -> ``units`` -> 1 MLP (MSE, Adam) that sleeps ``batch_delay_s`` per training batch.

    ``kill_at_epoch`` (1-based, 0 = never) with ``steps_per_epoch`` (the job's batches per epoch) makes the worker
    SIGKILL itself after ``kill_after_batches`` batches of that epoch - every time the job gets there.
    ``pause_in_validation_of_epoch`` (with ``steps_per_epoch`` and a ``pause_marker`` path) makes the first process
    that validates that epoch write its pid to the marker and SIGSTOP itself, before the epoch's end is recorded.
    """
    import keras

    if (kill_at_epoch or pause_in_validation_of_epoch) and steps_per_epoch < 1:
        raise ValueError("slow_regression: kill_at_epoch / pause_in_validation_of_epoch need steps_per_epoch")
    cls = _slow_model_class()
    model = cls([keras.Input((4,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(1)],
                name="slow_regression")
    model.batch_delay_s = float(batch_delay_s)
    model.kill_at_step = (kill_at_epoch - 1) * steps_per_epoch + kill_after_batches if kill_at_epoch else -1
    # While epoch E is validated the optimizer has taken exactly E * steps_per_epoch steps.
    model.pause_at_step = pause_in_validation_of_epoch * steps_per_epoch if pause_in_validation_of_epoch else -1
    model.pause_marker = pause_marker
    # No XLA: a py_function cannot be compiled (Keras leaves XLA off on CPU anyway; this makes it explicit).
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"], jit_compile=False)
    return model


def _once(marker: str) -> bool:
    """True for the first process to get here (an O_EXCL marker file); always True without a marker."""
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


@lru_cache(maxsize=1)
def _counting_class() -> type:
    import keras
    import tensorflow as tf

    class Seen(keras.layers.Layer):
        """Counts, per sample id, how often a training step saw it (a non-trainable weight: checkpointed)."""

        def __init__(self, n: int, **kw: Any) -> None:
            super().__init__(**kw)
            self.n = n

        def build(self, input_shape: Any) -> None:
            self.counts = self.add_weight(shape=(self.n,), initializer="zeros", trainable=False, name="counts")

        def call(self, inputs: Any, training: bool | None = None) -> Any:
            x, ids = inputs
            if training:
                self.counts.assign_add(tf.math.bincount(tf.cast(ids, tf.int32), minlength=self.n, maxlength=self.n,
                                                        dtype=self.counts.dtype))
            return x

    class CountingModel(keras.Model):
        """Sleeps ``batch_delay_s`` per training batch; at optimizer step ``kill_at_step`` SIGKILLs its process and at
        ``hang_at_step`` blocks for good (each once per ``marker`` file, or every time without one)."""

        batch_delay_s = 0.0
        kill_at_step = -1
        hang_at_step = -1
        marker = ""

        def _hook(self, step: Any) -> None:
            s = int(step)
            if s == self.kill_at_step and _once(self.marker):
                os.kill(os.getpid(), signal.SIGKILL)
            if s == self.hang_at_step and _once(self.marker):
                while True:  # a deadlocked loader or a stuck collective: nothing comes back
                    time.sleep(3600)
            if self.batch_delay_s > 0:
                time.sleep(self.batch_delay_s)

        def train_step(self, data: Any) -> Any:
            tf.py_function(self._hook, [self.optimizer.iterations], [])
            return super().train_step(data)

    return CountingModel, Seen


def counting_model(n: int = 256, batch_delay_s: float = 0.02, kill_at_step: int = -1, hang_at_step: int = -1,
                   marker: str = "") -> Any:
    """A model over ``{"x": (4,), "id": ()}`` that counts the samples it trains on (see :func:`id_dataset`)."""
    import keras

    cls, seen = _counting_class()
    x_in, id_in = keras.Input((4,), name="x"), keras.Input((), dtype="int64", name="id")
    h = seen(n, name="seen")([x_in, id_in])
    model = cls({"x": x_in, "id": id_in}, keras.layers.Dense(1)(keras.layers.Dense(8, activation="relu")(h)))
    model.batch_delay_s, model.kill_at_step, model.hang_at_step, model.marker = (
        float(batch_delay_s), kill_at_step, hang_at_step, marker)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", jit_compile=False)
    return model


def id_dataset(n: int = 256, batch_size: int = 8, shuffle_buffer: int = 64) -> Any:
    """(train, validation) ``tf.data`` pipelines of ``({"x", "id"}, y)``: the training one shuffled per pass."""
    import tensorflow as tf

    x, y = load_data(n=n)
    train = tf.data.Dataset.from_tensor_slices(({"x": x.astype("float32"), "id": np.arange(n)}, y.astype("float32")))
    val = tf.data.Dataset.from_tensor_slices(({"x": x[:32].astype("float32"), "id": np.arange(32)},
                                              y[:32].astype("float32")))
    return train.shuffle(shuffle_buffer, reshuffle_each_iteration=True).batch(batch_size).prefetch(2), val.batch(8)
