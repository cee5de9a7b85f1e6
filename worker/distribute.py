"""Several devices for one job: ``resources.gpus: N`` trains with ``tf.distribute.MirroredStrategy`` on N devices of
this worker (GPUs of a worker started with ``--device gpu:0,1``, or logical CPUs with ``TRAIND_LOGICAL_CPUS=N``).

>>> # with strategy_for(spec).scope(): model = build_model(...)
"""

from __future__ import annotations

from typing import Any

from jobs.contract.spec import JobSpec
from jobs.errors import UserCodeError


def device_count(kind: str) -> int:
    """How many ``cpu``/``gpu`` devices this worker can mirror a job over: the logical devices TensorFlow lists, the
    same list :func:`strategy_for` takes them from (so a worker never advertises devices it cannot train on)."""
    import tensorflow as tf

    return max(1, len(tf.config.list_logical_devices("GPU" if kind == "gpu" else "CPU")))


def strategy_for(spec: JobSpec) -> Any:
    """The default (one-device) strategy, or a MirroredStrategy over the first ``resources.gpus`` devices."""
    import tensorflow as tf

    n = spec.resources.gpus
    if n == 1:
        return tf.distribute.get_strategy()
    kind = "GPU" if spec.resources.device == "gpu" else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)]
    if len(devices) < n:  # routing sends such jobs only to workers with enough devices: a misconfigured worker
        hint = "--device gpu:0,1,..." if kind == "GPU" else "TRAIND_LOGICAL_CPUS=N"
        raise UserCodeError(f"resources.gpus={n}: this worker has {len(devices)} {kind} device(s) ({devices}); run "
                            f"jobs that need {n} devices on workers started with {hint}")
    return tf.distribute.MirroredStrategy(devices[:n])
