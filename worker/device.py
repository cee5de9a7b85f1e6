"""Pin a worker to its device *before* TensorFlow loads, then enable GPU memory growth.

>>> pin_device("cpu")
'cpu'
"""

from __future__ import annotations

import os
import re

from jobs.errors import ConfigError


def pin_device(device: str) -> str:
    """Set CUDA_VISIBLE_DEVICES for ``cpu`` / ``gpu`` / ``gpu:N``; must run before ``import tensorflow``."""
    m = re.fullmatch(r"(cpu|gpu)(?::(\d+))?", device)
    if not m:
        raise ConfigError(f"--device: expected cpu, gpu or gpu:N, received {device!r}")
    if m.group(1) == "cpu":
        # Hide GPUs so a CPU worker on a GPU host neither grabs GPU memory nor runs ops there.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    elif m.group(2) is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = m.group(2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return device


def configure_tensorflow(device: str) -> list[str]:
    """After import: memory growth on visible GPUs (several workers may share a host). Returns GPU names."""
    import tensorflow as tf

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
