"""Which job events alert, and what the outbox entry written with them carries. Pure: the job store imports it.

>>> alert_of({"kind": "failed", "msg": "failed: boom"})
'failed'
>>> alert_of({"kind": "requeued", "lost_at_ms": 1}), alert_of({"kind": "requeued"}), alert_of({"kind": "epoch"})
('lost_worker', None, None)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum
from typing import Any


class AlertKind(str, Enum):
    """What an alert says happened to a job (``TRAIND_NOTIFY_EVENTS`` and the message use these names)."""

    FAILED = "failed"
    SUCCEEDED = "succeeded"
    HUNG = "hung"
    PREEMPTED = "preempted"
    LOST_WORKER = "lost_worker"

    def __str__(self) -> str:
        return self.value


ALL = tuple(k.value for k in AlertKind)
OUTBOX_MAXLEN = 100_000  # entries kept (approximately) while no supervisor sends: Redis stays bounded
MSG_MAX = 1000  # characters of an event's message carried into the outbox and the alert

_BY_EVENT = {"failed": AlertKind.FAILED, "succeeded": AlertKind.SUCCEEDED, "hung": AlertKind.HUNG,
             "preempted": AlertKind.PREEMPTED}


def alert_of(event: Mapping[str, Any]) -> str | None:
    """The alert an event (as :func:`jobs.contract.events.event` builds it) raises, or None.

    A ``requeued`` event alerts as ``lost_worker`` only when the supervisor wrote it for an expired lease (it carries
    ``lost_at_ms``); a hung attempt's requeue is already the ``hung`` alert, and a retry is the operator's own act.
    """
    kind = event.get("kind")
    if kind == "requeued":
        return AlertKind.LOST_WORKER.value if "lost_at_ms" in event else None
    found = _BY_EVENT.get(str(kind))
    return found.value if found else None


def outbox_event(event: Mapping[str, Any]) -> str:
    """The event as the outbox carries it: JSON of its scalar fields (a hung event's thread stacks stay behind), the
    message cut to :data:`MSG_MAX` characters.

    >>> json.loads(outbox_event({"kind": "hung", "msg": "x" * 2000, "stacks": "..."}))["msg"][-3:]
    '...'
    """
    slim = {k: v for k, v in event.items() if k != "stacks" and (v is None or isinstance(v, (str, int, float, bool)))}
    msg = str(slim.get("msg") or "")
    if len(msg) > MSG_MAX:
        slim["msg"] = msg[: MSG_MAX - 3] + "..."
    return json.dumps(slim, separators=(",", ":"))
