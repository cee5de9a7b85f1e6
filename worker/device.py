"""Pin a worker to its device *before* TensorFlow loads, then enable GPU memory growth.

>>> pin_device("cpu")
'cpu'
"""

from __future__ import annotations

import os
import re

from jobs.errors import ConfigError


def pin_device(device: str) -> str:
    """Set CUDA_VISIBLE_DEVICES for ``cpu`` / ``gpu`` / ``gpu:N`` / ``gpu:0,1`` (before ``import tensorflow``)."""
    m = re.fullmatch(r"(cpu|gpu)(?::(\d+(?:,\d+)*))?", device)
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ConfigError(f"--device: expected cpu, gpu, gpu:N or gpu:N,M,..., received {device!r}")
    if m.group(1) == "cpu":
        # Hide GPUs so a CPU worker on a GPU host neither grabs GPU memory nor runs ops there.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    elif m.group(2) is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = m.group(2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return device


def configure_tensorflow(device: str, logical_cpus: int = 1) -> list[str]:
    """After import: memory growth on visible GPUs (several workers may share a host); the CPU split into
    ``logical_cpus`` logical devices when asked (before TensorFlow initialises its devices). Returns GPU names."""
    import tensorflow as tf

    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        except RuntimeError as e:  # devices already initialised (a second worker in one process)
            if len(tf.config.list_logical_devices("CPU")) < logical_cpus:
                raise ConfigError(f"TRAIND_LOGICAL_CPUS={logical_cpus}: TensorFlow was initialised first ({e})") from e

    gpus = tf.config.list_physical_devices("GPU")
    for g in gpus:
        try:
            tf.config.experimental.set_memory_growth(g, True)
        except RuntimeError:
            pass  # already initialised (second call in one process): growth was set the first time
    if device.startswith("gpu") and not gpus:
        raise ConfigError(f"--device {device}: TensorFlow sees no GPU (is the CUDA build of tensorflow installed?)")
    return [g.name for g in gpus]


def gpu_memory_mb(gpus: list[str]) -> float | None:
    """Current TensorFlow allocation on this worker's GPU in MiB, or None on CPU / when TF cannot tell."""
    if not gpus:
        return None
    try:
        import tensorflow as tf

        return round(tf.config.experimental.get_memory_info("GPU:0")["current"] / 2**20, 1)
    except Exception:  # informational only
        return None
