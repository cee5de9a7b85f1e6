"""Log format: human text (default) or one JSON object per line (``TRAIND_LOG_FORMAT=json``) for log shippers.

Structured fields come from ``extra={"event": ..., "job": ...}``; :mod:`jobs.redis.telemetry` logs one such line per
claim, epoch, checkpoint, requeue, finish and failure in the process that made the change.

>>> import json, logging
>>> rec = logging.LogRecord("traind", logging.INFO, __file__, 1, "job %s", ("ab",), None)
>>> json.loads(JsonFormatter().format(rec))["msg"]
'job ab'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def apply_from_env() -> None:
    """Switch the root handlers to JSON when ``TRAIND_LOG_FORMAT=json`` (validated by the settings classes)."""
    fmt = os.environ.get("TRAIND_LOG_FORMAT", "text").strip().lower()
    if fmt == "json":
        for h in logging.getLogger().handlers:
            h.setFormatter(JsonFormatter())
    elif fmt != "text":
        raise ValueError(f"TRAIND_LOG_FORMAT: expected 'text' or 'json', received {fmt!r}")


_NATIVE_LEVEL = re.compile(r"^(?:(?P<glog>[IWEF])\d{4} |(?P<word>WARNING|ERROR|INFO):)")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL,
           "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}
_ABSL_PREINIT = "All log messages before absl::InitializeLog() is called"  # a notice, whatever its "WARNING:" says
# Python's own records written meanwhile (traind's JSON, its text format, logging.basicConfig's): passed through
_PY_RECORD = re.compile(r"^(?:\{|\d{4}-\d\d-\d\d[ T]\d\d:\d\d|(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):\S)")
# TF_CPP_MIN_LOG_LEVEL 0-3: the lowest level of TensorFlow's own lines that is shown
_TF_MIN = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def _tf_min_level() -> int:
    try:
        return _TF_MIN[min(max(int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")), 0), 3)]
    except ValueError:
        return logging.INFO


@contextlib.contextmanager
def native_stderr_logged(logger: str = "tensorflow") -> Iterator[None]:
    """Route what native code writes straight to file descriptor 2 while the block runs through :mod:`logging`.

    TensorFlow 2.21 prints its start-up lines from C++ before absl's logging is initialised ("WARNING: All log
    messages before absl::InitializeLog() ...", "I0000 ... oneDNN custom operations are on"), whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says: banners in a user's terminal, and non-JSON lines that break a log shipper in
    ``TRAIND_LOG_FORMAT=json``. Around ``import tensorflow`` the descriptor points at a temporary file; afterwards
    each line is logged at its level (from its glog-style prefix; a line without one continues the line before) unless
    ``TF_CPP_MIN_LOG_LEVEL`` hides that level, as TensorFlow itself would, and the descriptor is restored. Lines
    that are Python's own records written meanwhile (JSON, traind's text format, ``logging.basicConfig``'s) pass
    through as they are.

    >>> with native_stderr_logged():
    ...     pass
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (an embedding host): nothing to route
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log, level, shown = logging.getLogger(logger), logging.WARNING, _tf_min_level()
            for line in tmp.read().decode(errors="replace").splitlines():
                if _PY_RECORD.match(line):
                    sys.stderr.write(line + "\n")
                elif line.strip():
                    if m := _NATIVE_LEVEL.match(line):
                        level = logging.INFO if _ABSL_PREINIT in line else _LEVELS[m["glog"] or m["word"]]
                    if level >= shown:
                        log.log(level, line, extra={"native": True})
            sys.stderr.flush()
