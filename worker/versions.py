"""Versions the worker's guarantees rely on, checked before it takes any job.

Keras safe mode is what keeps an inline model config from running code: the vocabulary-file check needs
Keras 3.12 and the h5 ``Lambda`` fix 3.11.3. pyproject pins ``keras>=3.12``; this refuses an environment that was
installed some other way.

>>> version_tuple("3.12.0rc1")
(3, 12, 0)
"""

from __future__ import annotations

import re

from jobs.errors import ConfigError

MIN_KERAS = (3, 12, 0)


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"3.11.3"`` -> ``(3, 11, 3)``; suffixes (``rc1``, ``.dev``) ignored; unparsable -> ``(0, 0, 0)``."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        return (0, 0, 0)
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_keras(version: str | None = None) -> str:
    """Return the Keras version in use, or raise ConfigError when it is older than :data:`MIN_KERAS`."""
    if version is None:
        import keras

        version = str(getattr(keras, "__version__", "unknown"))
    if version_tuple(version) < MIN_KERAS:
        need = ".".join(map(str, MIN_KERAS[:2]))
        raise ConfigError(
            f"keras {version} is installed; traind workers need keras>={need} (safe-mode protections: the "
            f"vocabulary-file check of 3.12, the h5 Lambda fix of 3.11.3): pip install 'keras>={need}'"
        )
    return version
