"""Custom Keras objects and schedules for the parity tests (``tests.parity.objects:...``, allowlisted by the tests).

>>> halve_every_2(0, 0.1)
0.1
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="traind_tests")
class Scale(keras.layers.Layer):
    """Multiplies its input by one trainable scalar (a custom layer Keras cannot locate without custom_objects)."""

    def build(self, input_shape: Any) -> None:
        self.s = self.add_weight(shape=(), initializer="ones", name="s")

    def call(self, x: Any) -> Any:
        return x * self.s


def halve_every_2(epoch: int, lr: float) -> float:
    """A LearningRateScheduler schedule: halve the learning rate every second epoch."""
    return lr * 0.5 if epoch and epoch % 2 == 0 else lr


def regression(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], "float32") + 0.3 * rng.normal(size=n).astype("float32"))[:, None]
    return x, y


def classes(n: int = 240, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Three imbalanced classes (class weights matter)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1], [0.3, 1.2]).astype("int32")
    return x, y


def regression_loader(n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """A data loader without validation data."""
    return regression(n)


def dense(units: int = 8, lr: float = 0.05, scale: bool = False) -> keras.Model:
    layers: list[Any] = [keras.Input((4,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(1)]
    if scale:
        layers.append(Scale())
    m = keras.Sequential(layers, name="dense")
    m.compile(optimizer=keras.optimizers.Adam(lr), loss="mse", metrics=["mae"])
    return m


def classifier(lr: float = 0.05) -> keras.Model:
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(3, activation="softmax")], name="classifier")
    m.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def two_inputs(lr: float = 0.05) -> keras.Model:
    """A functional model with two named inputs (fit with a dict of arrays)."""
    a, b = keras.Input((3,), name="a"), keras.Input((1,), name="b")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    m = keras.Model({"a": a, "b": b}, keras.layers.Dense(1, name="out")(h), name="two_inputs")
    m.compile(optimizer=keras.optimizers.Adam(lr), loss="mse", metrics=["mae"])
    return m


def kill_once_regression(kill_at_step: int, marker: str, batch_delay_s: float = 0.02, units: int = 8,
                         learning_rate: float = 0.05) -> keras.Model:
    """``tests.models:slow_regression`` whose process SIGKILLs itself once, at optimizer step ``kill_at_step``
    (0-based), the first time any attempt gets there (``marker`` is created with O_EXCL): a crash at a chosen batch,
    not repeated by the resumed attempt that replays the same step."""
    import os
    import signal

    from tests.models import _slow_model_class

    base = _slow_model_class()

    class KillOnce(base):  # type: ignore[misc, valid-type]
        def _hook(self, step: Any) -> None:
            if int(step) == kill_at_step:
                try:
                    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                except FileExistsError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no checkpoint: a power loss
            if self.batch_delay_s > 0:
                import time

                time.sleep(self.batch_delay_s)

    model = KillOnce([keras.Input((4,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(1)],
                     name="kill_once_regression")
    model.batch_delay_s = float(batch_delay_s)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"], jit_compile=False)
    return model
