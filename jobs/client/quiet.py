"""Keep TensorFlow's start-up banners out of the client's stderr.

>>> # quiet_tensorflow(); import keras  (what the client does before it touches Keras)
"""

from __future__ import annotations

import contextlib
import os
import sys


def quiet_tensorflow() -> None:
    """Hide TensorFlow's start-up INFO banners (CPU features, oneDNN, absl pre-init) in the client's stderr; its
    warnings and errors still show. Loads TensorFlow (when it is installed and not loaded yet) with its C++ start-up
    lines routed through :func:`jobs.logfmt.native_stderr_logged`, which TensorFlow 2.21 prints whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says. A level the user set wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" in sys.modules:
        return
    from jobs.logfmt import native_stderr_logged

    with native_stderr_logged(), contextlib.suppress(ImportError):
        import tensorflow  # noqa: F401 - loaded here so that its banners are filtered
