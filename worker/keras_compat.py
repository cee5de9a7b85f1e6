"""The one place the worker touches private Keras / TensorFlow APIs, and the versions they were checked against.

* Keras' ``MonitorCallback`` (``keras.src``) and its ``_set_monitor_op`` / ``_is_improvement``: the checkpoint
  monitor decides "improved" exactly as ``ModelCheckpoint`` / ``EarlyStopping`` do (direction inferred from the
  metric, ``min_delta``, baseline), instead of a second hand-written copy of those rules.
* TensorFlow's ``ops._gradient_registry``: the ``CustomGradient-N`` entries a finished job's traced step left
  behind are dropped between jobs (a long-lived worker otherwise grows, see bench/memory.py).

tests/worker_unit/test_keras_compat.py pins :data:`KERAS_CHECKED` / :data:`TENSORFLOW_CHECKED` and fails loudly when
the installed versions leave that range or an attribute is gone: re-check these call sites, then widen the range.

>>> KERAS_CHECKED[0] <= KERAS_CHECKED[1]
True
"""

from __future__ import annotations

from typing import Any

from worker.versions import version_tuple

# Inclusive (lowest, highest) major.minor ranges these private APIs were read against.
KERAS_CHECKED: tuple[tuple[int, int], tuple[int, int]] = ((3, 12), (3, 15))
TENSORFLOW_CHECKED: tuple[tuple[int, int], tuple[int, int]] = ((2, 20), (2, 21))


def in_checked_range(version: str, checked: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    """Whether ``version``'s major.minor lies in ``checked``.

    >>> in_checked_range("3.15.1", KERAS_CHECKED), in_checked_range("4.0.0", KERAS_CHECKED)
    (True, False)
    """
    return checked[0] <= version_tuple(version)[:2] <= checked[1]


def monitor_callback(monitor: str, mode: str, baseline: float | None) -> Any:
    """A Keras ``MonitorCallback`` (private base of ``ModelCheckpoint``): the same "improved" rules as Keras."""
    from keras.src.callbacks.monitor_callback import MonitorCallback

    return MonitorCallback(monitor, mode, baseline=baseline)


def resolve_direction(cb: Any) -> None:
    """Set ``cb.monitor_op`` (min or max) as Keras does, from ``mode`` or the model's metric, once."""
    if cb.monitor_op is None:
        cb._set_monitor_op()


def is_improvement(cb: Any, current: float, best: float | None) -> bool:
    """Keras' own comparison (after :func:`resolve_direction`), ``min_delta`` and baseline included."""
    return bool(cb._is_improvement(current, best))


def class_weight_map_fn(class_weight: dict[int, float]) -> Any:
    """Keras' own ``class_weight`` mapping for a Dataset (``tf_dataset_adapter.make_class_weight_map_fn``), so that a
    wrapped Dataset is weighted exactly as ``fit`` weights one."""
    from keras.src.trainers.data_adapters.tf_dataset_adapter import make_class_weight_map_fn

    return make_class_weight_map_fn(class_weight)


def gradient_registry() -> dict[Any, Any]:
    """TensorFlow's process-wide gradient function registry (``ops._gradient_registry._registry``)."""
    from tensorflow.python.framework import ops

    return ops._gradient_registry._registry  # type: ignore[no-any-return]


def drop_custom_gradients() -> int:
    """Forget the ``CustomGradient-N`` gradient functions traced jobs registered; how many were dropped.

    In graph mode every ``tf.custom_gradient`` call registers an entry and never removes it; Keras' optimizer step
    calls one (its gradient all-reduce), so each entry kept a job's whole traced train step alive: ~1.7 MB per job on
    a long-lived worker. No traced function outlives a job here. Best effort: if the API moved, this does nothing.
    """
    try:
        registry = gradient_registry()
        names = [k for k in registry if isinstance(k, str) and k.startswith("CustomGradient-")]
        for name in names:
            del registry[name]
        return len(names)
    except Exception:  # noqa: BLE001 - best effort (tests/worker_unit pins the API so a move is noticed)
        return 0
