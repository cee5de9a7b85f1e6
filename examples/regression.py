"""The seed note's workflow: a regression whose val_loss plateaus at the noise floor, so early stopping triggers.

>>> x, t = load_data(n=100)
>>> x.shape, t.shape
((100, 4), (100, 1))
"""

from __future__ import annotations

import numpy as np


def load_data(n: int = 2000, noise: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``t = x @ w + b + noise``: no model can beat the noise variance, so val_loss stops improving."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    w = np.array([[1.5], [-2.0], [0.5], [1.0]], dtype="float32")
    t = (x @ w + 0.7 + noise * rng.normal(size=(n, 1))).astype("float32")
    return x, t


def build_model(units: int = 16, learning_rate: float = 0.01, optimizer: str = "adam") -> object:
    """A small MLP compiled with MSE."""
    import keras

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(1)],
        name="regression",
    )
    opt = keras.optimizers.Adam(learning_rate) if optimizer == "adam" else keras.optimizers.SGD(learning_rate)
    model.compile(optimizer=opt, loss="mse", metrics=["mae"])
    return model
