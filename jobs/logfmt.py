"""Log format: human text (default) or one JSON object per line (``TRAIND_LOG_FORMAT=json``) for log shippers.

Structured fields come from ``extra={"event": ..., "job": ...}``; :mod:`jobs.telemetry` logs one such line per
claim, epoch, checkpoint, requeue, finish and failure in the process that made the change.

>>> import json, logging
>>> rec = logging.LogRecord("traind", logging.INFO, __file__, 1, "job %s", ("ab",), None)
>>> json.loads(JsonFormatter().format(rec))["msg"]
'job ab'
"""

from __future__ import annotations

import json
import logging
import os
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
