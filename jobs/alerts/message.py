"""What an alert says, and when a failed send is tried again. Pure (an injected clock is all the tests need).

>>> title, body = compose("failed", "1a2b", JobRecord.parse({"name": "mnist", "state": "failed", "epoch": "3",
...                       "epochs": "10", "error": "ValueError: boom"}), {"msg": "failed: ValueError: boom"}, None)
>>> title
'traind: job mnist failed'
>>> retry_delay_s(1, base_s=5, cap_s=600), retry_delay_s(3, base_s=5, cap_s=600), retry_delay_s(30, 5, 600)
(5.0, 20.0, 600.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.contract.records import JobRecord

_VERB = {"failed": "failed", "succeeded": "succeeded", "hung": "hung", "preempted": "was preempted",
         "lost_worker": "lost its worker"}
FIELD_MAX = 500  # characters of one user-supplied field (error, reason) in a message


def retry_delay_s(tries: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after the ``tries``-th failed send: ``base_s`` doubled per earlier failure, at most ``cap_s``."""
    return float(min(cap_s, base_s * 2 ** min(max(tries - 1, 0), 40)))


def _cut(text: Any) -> str:
    s = str(text)
    return s if len(s) <= FIELD_MAX else s[: FIELD_MAX - 3] + "..."


def _num(v: float) -> str:
    return f"{v:.6g}"


def compose(alert: str, job_id: str, rec: JobRecord, event: Mapping[str, Any],
            public_url: str | None) -> tuple[str, str]:
    """The alert's title and body: the job's name, id, state, owner, reason, epoch, best metric and dashboard link."""
    name = rec.name or job_id
    title = f"traind: job {name} {_VERB.get(alert, alert)}"
    state = event.get("state") or rec.state or "?"
    lines = [f"job: {name} ({job_id})", f"event: {alert}", f"state: {state}"]
    if rec.owner:
        lines.append(f"owner: {rec.owner}")
    if event.get("msg"):
        lines.append(f"reason: {_cut(event['msg'])}")
    if rec.error and alert == "failed" and rec.error not in str(event.get("msg") or ""):  # not said twice
        lines.append(f"error: {_cut(rec.error)}")
    progress = f"epoch {rec.epoch}/{rec.epochs}" if rec.epochs else f"epoch {rec.epoch}"
    lines.append(f"progress: {progress}, restarts {rec.restarts}")
    if rec.best_value is not None:
        at = f" at epoch {rec.best_epoch}" if rec.best_epoch is not None else ""
        lines.append(f"best: {rec.monitor}={_num(rec.best_value)}{at}")
    if rec.worker:
        lines.append(f"worker: {rec.worker}")
    if public_url:
        lines.append(f"dashboard: {public_url.rstrip('/')}/#/job/{job_id}")
    return title, "\n".join(lines)
