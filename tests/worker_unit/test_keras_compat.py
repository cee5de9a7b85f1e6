"""The private Keras / TensorFlow APIs the worker relies on (worker/keras_compat.py), pinned to the versions they
were checked against. A failure here means: re-read those call sites against the new version, then widen the range."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pytest

from worker import keras_compat
from worker.keras_compat import KERAS_CHECKED, TENSORFLOW_CHECKED, in_checked_range


def _installed(*names: str) -> str:
    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            continue
    pytest.fail(f"none of {names} is installed")


def _range(checked: tuple[tuple[int, int], tuple[int, int]]) -> str:
    return f"{checked[0][0]}.{checked[0][1]}-{checked[1][0]}.{checked[1][1]}"


def test_keras_version_is_in_the_checked_range() -> None:
    v = _installed("keras")
    assert in_checked_range(v, KERAS_CHECKED), (
        f"keras {v} is outside {_range(KERAS_CHECKED)}, the versions worker/keras_compat.py's private Keras APIs "
        "(keras.src MonitorCallback._set_monitor_op / _is_improvement) were checked against: re-check them, then "
        "update KERAS_CHECKED")


def test_tensorflow_version_is_in_the_checked_range() -> None:
    v = _installed("tensorflow", "tensorflow-cpu", "tensorflow_cpu")
    assert in_checked_range(v, TENSORFLOW_CHECKED), (
        f"tensorflow {v} is outside {_range(TENSORFLOW_CHECKED)}, the versions worker/keras_compat.py's private "
        "TensorFlow API (ops._gradient_registry._registry) was checked against: re-check it, then update "
        "TENSORFLOW_CHECKED")


def test_monitor_callback_private_methods_exist_and_compare_as_keras_does() -> None:
    cb = keras_compat.monitor_callback("val_loss", "auto", None)
    for name in ("_set_monitor_op", "_is_improvement", "monitor_op", "best"):
        assert hasattr(cb, name), f"keras MonitorCallback lost {name}: worker/keras_compat.py needs a new way"
    keras_compat.resolve_direction(cb)
    assert keras_compat.is_improvement(cb, 0.5, None)  # the first value is an improvement
    assert keras_compat.is_improvement(cb, 0.4, 0.5) and not keras_compat.is_improvement(cb, 0.6, 0.5)
    up = keras_compat.monitor_callback("val_accuracy", "max", 0.9)
    keras_compat.resolve_direction(up)
    assert not keras_compat.is_improvement(up, 0.8, up.best) and keras_compat.is_improvement(up, 0.95, up.best)


def test_gradient_registry_is_where_worker_expects_it() -> None:
    registry = keras_compat.gradient_registry()
    assert isinstance(registry, dict), "tensorflow's ops._gradient_registry._registry is no longer a dict"
    import tensorflow as tf

    @tf.custom_gradient
    def ident(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        return tf.identity(x), lambda dy: dy

    tf.function(ident)(tf.constant(1.0))  # graph mode: registers a CustomGradient-N entry
    assert any(isinstance(k, str) and k.startswith("CustomGradient-") for k in registry)
    assert keras_compat.drop_custom_gradients() >= 1
    assert not any(isinstance(k, str) and k.startswith("CustomGradient-") for k in registry)


def test_class_weight_map_fn_is_where_worker_expects_it() -> None:
    import numpy as np
    import tensorflow as tf

    fn = keras_compat.class_weight_map_fn({0: 1.0, 1: 3.0})
    x, y, sw = fn(tf.zeros((2, 1)), tf.constant([0, 1]))
    assert np.asarray(sw).tolist() == [1.0, 3.0]


def test_in_checked_range() -> None:
    assert in_checked_range("3.12.0rc1", ((3, 12), (3, 15)))
    assert not in_checked_range("3.11.3", ((3, 12), (3, 15))) and not in_checked_range("3.16.0", ((3, 12), (3, 15)))
