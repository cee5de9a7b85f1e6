"""An MNIST-sized classifier (28x28 inputs, 10 classes) on synthetic data: no download needed.

>>> x, y = load_data(n=20)
>>> x.shape, y.shape
((20, 28, 28, 1), (20,))
"""

from __future__ import annotations

import numpy as np


def load_data(n: int = 6000, noise: float = 0.6, seed: int = 0, validation: bool = True) -> tuple[np.ndarray, ...]:
    """Each class is a fixed random 28x28 template plus noise; returns (x, y) or (x, y, x_val, y_val)."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 1, size=(10, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=n)
    x = (templates[y] + noise * rng.normal(size=(n, 28, 28, 1))).astype("float32")
    if not validation:
        return x, y.astype("int64")
    cut = int(n * 0.85)
    return x[:cut], y[:cut].astype("int64"), x[cut:], y[cut:].astype("int64")


def build_model(filters: int = 8, learning_rate: float = 1e-3) -> object:
    import keras

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(filters, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="classifier",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
