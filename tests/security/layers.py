"""Custom Keras layers for the security tests (allowlisted by the tests that use them)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="traind_security")
class ConcreteBias(keras.layers.Layer):
    """Creates its weight from concrete values while it is built, which a Keras StatelessScope refuses."""

    def build(self, input_shape: Any) -> None:
        self.bias = keras.Variable(np.zeros(input_shape[-1], "float32"))  # a value, not an initializer

    def call(self, x: Any) -> Any:
        return x + self.bias
