"""Why a queued job is not starting: no live worker serves its queue. Said by ``traind status``, ``watch``,
``submit --wait`` and the dashboard after :data:`GRACE_S` seconds in the queue, with how to start one.

Imports only redis-level modules (the read-only CLI commands use it).

>>> # no_worker_note(r, store.get(job_id), store.now_ms())
>>> # 'no live worker serves queue default (cpu) for 12 s: start one with `traind worker --queues default` ...'
"""

from __future__ import annotations

from typing import Any

from jobs.contract import keys

GRACE_S = 5.0  # a worker between two jobs, or starting, is not "missing"
LIVE_S = 20.0  # a worker whose registry heartbeat is older than this is not counted (it renews every second or so)
_WAITING = ("queued", "requeued")


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)  # a planted non-UTF-8 value: one bad row


def no_worker_note(r: Any, status: dict[str, Any], now_ms: int, grace_s: float = GRACE_S) -> str | None:
    """A one-line note when ``status`` is a job waiting for more than ``grace_s`` with no live worker listening on
    its queue (logical queue and device kind); None otherwise."""
    if status.get("state") not in _WAITING:
        return None
    since = status.get("updated_at") or status.get("created_at")
    try:
        waited_s = (now_ms - int(since)) / 1000
    except (TypeError, ValueError):
        return None
    parsed = keys.parse_rq_queue_name(str(status.get("queue") or ""))
    if parsed is None or waited_s < grace_s:
        return None
    queue, kind = parsed["queue"], parsed["kind"]
    ids = r.zrangebyscore(keys.WORKERS, now_ms - LIVE_S * 1000, "+inf")
    pipe = r.pipeline(transaction=False)
    for wid in ids:
        pipe.hmget(keys.worker(_s(wid)), "device", "queues")
    for res in pipe.execute(raise_on_error=False) if ids else []:
        if isinstance(res, Exception) or res[0] is None:
            continue  # its hash expired (gone), or a key that is no hash
        device, queues = res
        if _s(device).startswith(kind) and queue in _s(queues or "default").split(","):
            return None
    how = f"traind worker --queues {queue}" + (" --device gpu:0" if kind == "gpu" else "")
    return (f"no live worker serves queue {queue} ({kind}) for {waited_s:.0f} s: start one with `{how}` "
            "(or run `traind up`, which starts workers)")
