"""Live notifications and operational measurements, recorded in Redis by the processes that observe them.

Workers and supervisors *record*; ``traind serve`` *exposes* (Server-Sent Events, ``/metrics``). Nothing here is
ever required for correctness: every call is best effort and a Redis error only loses one sample.

* Notifications: one pub/sub channel (:data:`CHANNEL`); each message is a small JSON object
  ``{"job": id, "kind": "created"|"state"|"progress"|"epoch"|"checkpoint"|"event", ...}``. Subscribers re-read the
  job from Redis, so a lost message costs latency, never correctness.
* Counters: one hash (:data:`COUNTERS`) of ``name[:label]`` -> number (labels are from small fixed sets).
* Histograms: one hash per histogram (``traind:metrics:hist:<name>``) with cumulative-free bucket counts, ``sum``
  and ``count``; buckets are fixed in :data:`BUCKETS` so every process agrees.

>>> # publish(r, "ab12", "state", state="running"); observe(r, "epoch_seconds", 1.7)
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from typing import Any

import redis

from jobs.contract import keys
from jobs.contract.records import log_problems

log = logging.getLogger("traind.telemetry")

CHANNEL = keys.NOTIFY_CHANNEL
COUNTERS = keys.METRICS_COUNTERS
REQUEUE_REASONS = ("worker_lost", "preempted", "retry", "hung")

BUCKETS: dict[str, tuple[float, ...]] = {
    # kill -> requeue: bounded below by the lease TTL (5 s default) plus one supervisor pass
    "detection_seconds": (0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300),
    "epoch_seconds": (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    "checkpoint_write_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    "checkpoint_bytes": (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10),
}


def hist_key(name: str) -> str:
    return keys.metrics_histogram(name)


_STATE_EVENTS = {"running": "claim", "requeued": "requeue", "succeeded": "finish", "cancelled": "finish",
                 "failed": "failure", "queued": "submit"}
jlog = logging.getLogger("traind.jobs")


def publish(r: redis.Redis, job_id: str, kind: str, **data: Any) -> None:
    """Tell live viewers that ``job_id`` changed (best effort); state changes also get one structured log line."""
    if kind in ("state", "created"):
        ev = _STATE_EVENTS.get(str(data.get("state")), "state")
        jlog.info("job %s %s (%s -> %s)", job_id, ev, data.get("previous", "-"), data.get("state"),
                  extra={"event": ev, "job": job_id, "state": data.get("state")})
    try:
        r.publish(CHANNEL, json.dumps({"job": job_id, "kind": kind, **data}, separators=(",", ":"), default=str))
    except redis.RedisError as e:  # the write it announces already succeeded; viewers re-read on the next one
        log.debug("notify %s %s lost: %s", job_id, kind, e)


def incr(r: redis.Redis, name: str, amount: float = 1) -> None:
    try:
        r.hincrbyfloat(COUNTERS, name, amount)
    except redis.RedisError as e:
        log.debug("counter %s lost: %s", name, e)


def observe(r: redis.Redis, name: str, value: float) -> None:
    """Add one sample to histogram ``name`` (one of :data:`BUCKETS`)."""
    bounds = BUCKETS[name]
    bucket = next((f"{b:g}" for b in bounds if value <= b), "+Inf")
    try:
        pipe = r.pipeline(transaction=False)
        pipe.hincrby(hist_key(name), bucket, 1)
        pipe.hincrbyfloat(hist_key(name), "sum", float(value))
        pipe.hincrby(hist_key(name), "count", 1)
        pipe.execute()
    except redis.RedisError as e:
        log.debug("histogram %s sample lost: %s", name, e)


def record_requeue(r: redis.Redis, reason: str, detection_s: float | None = None) -> None:
    """Count a requeue by reason (one of :data:`REQUEUE_REASONS`); a lost worker also records its detection time."""
    incr(r, f"requeues:{reason if reason in REQUEUE_REASONS else 'other'}")
    if detection_s is not None:
        observe(r, "detection_seconds", detection_s)


def on_progress(r: redis.Redis, job_id: str, history_set: dict[int, dict[str, Any]] | None,
                ckpt_set: dict[int, dict[str, Any]] | None) -> None:
    """After a fenced progress write: epoch durations into the histogram, then one notification."""
    if history_set:
        for e, entry in sorted(history_set.items()):
            t = entry.get("time_s")
            if isinstance(t, (int, float)):
                observe(r, "epoch_seconds", float(t))
            jlog.info("job %s epoch %s %s", job_id, e, entry, extra={"event": "epoch", "job": job_id, "epoch": e,
                                                                     "metrics": entry})
        publish(r, job_id, "epoch", epoch=max(history_set))
    elif ckpt_set:
        for key, m in sorted(ckpt_set.items()):
            jlog.info("job %s checkpoint %s (epoch %s, %s bytes)", job_id, m.get("file"), m.get("epoch"),
                      m.get("size"), extra={"event": "checkpoint", "job": job_id, "epoch": m.get("epoch"),
                                            "key": key, "bytes": m.get("size")})
        publish(r, job_id, "checkpoint", key=max(ckpt_set))
    else:
        publish(r, job_id, "progress")


def supervisor_pass(r: redis.Redis, now_ms: int) -> None:
    """Record that this supervisor process finished a pass (``traind health --supervisor`` reads it)."""
    try:
        pipe = r.pipeline(transaction=False)
        pipe.zadd(keys.SUPERVISORS, {f"{socket.gethostname()}-{os.getpid()}": now_ms})
        pipe.zremrangebyscore(keys.SUPERVISORS, 0, now_ms - 86_400_000)  # forget supervisors gone for a day
        pipe.execute()
    except redis.RedisError as e:
        log.debug("supervisor pass not recorded: %s", e)


def _numbers(raw: dict[bytes, bytes], what: str) -> dict[str, float]:
    """A hash of numbers; a field that is not one is left out (and logged once), never a failed scrape."""
    out: dict[str, float] = {}
    bad: list[str] = []
    for k, v in raw.items():
        name = k.decode(errors="replace")
        try:
            f = float(v)
        except ValueError:
            bad.append(f"{name}: not a number")
            continue
        if math.isnan(f):
            bad.append(f"{name}: NaN")
            continue
        out[name] = f
    log_problems(what, bad)
    return out


def read_counters(r: redis.Redis) -> dict[str, float]:
    return _numbers(r.hgetall(COUNTERS), COUNTERS)


def read_histogram(r: redis.Redis, name: str) -> tuple[list[tuple[str, float]], float, float]:
    """(cumulative buckets as (le, count) ending with +Inf, sum, count) in Prometheus' form."""
    raw = _numbers(r.hgetall(hist_key(name)), hist_key(name))
    acc, out = 0.0, []
    for b in BUCKETS[name]:
        acc += raw.get(f"{b:g}", 0.0)
        out.append((f"{b:g}", acc))
    acc += raw.get("+Inf", 0.0)
    out.append(("+Inf", acc))
    return out, raw.get("sum", 0.0), raw.get("count", acc)
