"""A job's goodput read from Redis (its events and record), and the fleet's totals kept as telemetry counters.

:func:`job_goodput` is what ``traind status``, the API and the dashboard show; :func:`record_finished` adds a finished
job's parts to the fleet counters once (``goodput:<part>_s``, guarded by a ``goodput_recorded`` flag on the record),
which ``/metrics`` exposes as ``traind_badput_seconds{reason}`` and ``traind_goodput_ratio``, without job labels.

>>> # g = job_goodput(store, job_id); g.to_dict()["ratio"]
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from jobs.contract import keys
from jobs.goodput import REASONS, Goodput, account
from jobs.redis import packed, telemetry

log = logging.getLogger("traind.goodput")

MAX_EVENTS = 5000  # the events list is trimmed to events_max (2000 by default) anyway


def job_goodput(store: Any, job_id: str, raw: dict[str, str] | None = None, lease_ttl_s: float = 5.0) -> Goodput:
    """The job's wall time split (see :mod:`jobs.goodput`), from its events and its ``ckpt_stall_s`` field."""
    raw = store.raw(job_id) if raw is None else raw
    try:
        stall = float(raw.get("ckpt_stall_s") or 0.0)
    except ValueError:
        stall = 0.0
    events = []
    for raw_ev in packed.events_raw(store.r, job_id, -MAX_EVENTS):
        try:
            ev = json.loads(raw_ev)
        except ValueError:  # a malformed event is one bad row: left out
            continue
        if isinstance(ev, dict):
            events.append(ev)
    return account(events, stall_s=stall, now_ms=store.now_ms(), lease_ttl_s=lease_ttl_s)


def record_finished(store: Any, job_id: str, lease_ttl_s: float = 5.0) -> Goodput | None:
    """Add a finished job's parts to the fleet counters, once; None when already recorded or not finished."""
    r = store.r
    try:
        state = r.hget(keys.job(job_id), "state")
        if state not in (b"succeeded", b"failed", b"cancelled") or not r.hsetnx(keys.job(job_id), "goodput_recorded",
                                                                                 "1"):
            return None
        g = job_goodput(store, job_id, lease_ttl_s=lease_ttl_s)
    except (redis.RedisError, ValueError, KeyError) as e:
        log.debug("goodput of %s not recorded: %s", job_id, e)
        return None
    telemetry.incr(r, "goodput:wall_s", g.wall_s)
    telemetry.incr(r, "goodput:productive_s", g.productive_s)
    for reason, seconds in g.badput().items():
        telemetry.incr(r, f"goodput:{reason}_s", seconds)
    return g


def fleet_totals(counters: dict[str, float]) -> tuple[float | None, dict[str, float]]:
    """(fleet goodput ratio, badput seconds per reason) from the telemetry counters; the ratio is None before any
    job finished.

    >>> fleet_totals({"goodput:wall_s": 100.0, "goodput:productive_s": 97.0, "goodput:redone_s": 3.0})[0]
    0.97
    """
    wall = counters.get("goodput:wall_s", 0.0)
    ratio = counters.get("goodput:productive_s", 0.0) / wall if wall > 0 else None
    return ratio, {r: counters.get(f"goodput:{r}_s", 0.0) for r in REASONS}
