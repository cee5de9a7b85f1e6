"""Lemon machines: a worker's machine (host and device) on which attempts hung or died repeatedly is drained.

Each failure of an attempt (a hang noticed by the worker's watchdog or by a supervisor, a worker lost with its
lease) is recorded against the machine it ran on, ``<host>/<device>``. With ``threshold`` failures within
``window_s``, the machine is drained: its workers stop taking jobs (they keep registering, marked ``drained``) until
an operator puts it back (``traind undrain HOST/DEVICE``). A job's own faults (its code raised) are not counted.

Keys: ``traind:lemon:failures:<machine>`` (sorted set of failure times, ms, trimmed to the window) and
``traind:lemon:drained`` (hash machine -> JSON: when, why).

>>> LemonPolicy(threshold=3, window_s=3600).should_drain([0, 1_000_000, 2_000_000], now_ms=3_000_000)
True
>>> LemonPolicy(threshold=3, window_s=3600).should_drain([0, 1_000_000, 2_000_000], now_ms=3_700_000)
False
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobs.contract import keys

DRAINED = keys.LEMONS_DRAINED
_MAX_MACHINE = 300


def failures_key(machine: str) -> str:
    return keys.lemon_failures(machine)


def machine_of(host: str, device: str) -> str:
    """The machine a worker runs on: ``host/device`` (``gpu:0`` and ``gpu:1`` of one host are two machines)."""
    return f"{host}/{device}"[:_MAX_MACHINE]


def machine_of_worker(r: Any, worker_id: str) -> str | None:
    """The machine of a registered worker (its registry entry outlives its lease by a few TTLs), None if unknown."""
    from jobs.contract.keys import worker

    if not worker_id:
        return None
    host, device = r.hmget(worker(worker_id), ["host", "device"])
    if not host or not device:
        return None
    return machine_of(host.decode(errors="replace"), device.decode(errors="replace"))


@dataclass(frozen=True)
class LemonPolicy:
    """Drain a machine after ``threshold`` failures within ``window_s`` (``threshold`` 0: never)."""

    threshold: int = 3
    window_s: float = 3600.0

    def should_drain(self, failures_ms: Sequence[float], now_ms: float) -> bool:
        if self.threshold <= 0:
            return False
        return sum(1 for t in failures_ms if now_ms - t <= self.window_s * 1000) >= self.threshold


def record_failure(r: Any, machine: str, *, kind: str, job_id: str, now_ms: int, policy: LemonPolicy) -> bool:
    """Count a failure (``kind``: ``hung`` or ``lost``) of an attempt of ``job_id`` on ``machine``; drain the machine
    when the policy says so. True when this failure drained it."""
    key = failures_key(machine)
    pipe = r.pipeline()
    pipe.zadd(key, {f"{now_ms}:{kind}:{job_id}": now_ms})
    pipe.zremrangebyscore(key, "-inf", now_ms - int(policy.window_s * 1000))
    pipe.pexpire(key, int(policy.window_s * 1000) + 60_000)
    pipe.zrange(key, 0, -1, withscores=True)
    recent = [score for _, score in pipe.execute()[-1]]
    if not policy.should_drain(recent, now_ms) or r.hexists(DRAINED, machine):
        return False
    why = f"{len(recent)} failed attempts (hung or lost) within {policy.window_s:.0f} s, the last {kind} ({job_id})"
    return bool(r.hsetnx(DRAINED, machine, json.dumps({"since_ms": now_ms, "reason": why})))


def is_drained(r: Any, machine: str) -> bool:
    return bool(r.hexists(DRAINED, machine))


def drained(r: Any, limit: int = 1000) -> dict[str, dict[str, Any]]:
    """Drained machines -> ``{"since_ms", "reason"}`` (a malformed entry shows its raw text as the reason)."""
    out: dict[str, dict[str, Any]] = {}
    for i, (m, raw) in enumerate(r.hscan_iter(DRAINED, count=100)):
        if i >= limit:
            break
        name = m.decode(errors="replace") if isinstance(m, bytes) else str(m)
        try:
            info = json.loads(raw)
            if not isinstance(info, dict):
                raise ValueError("not an object")
        except (ValueError, TypeError):
            info = {"since_ms": None, "reason": str(raw)[:200]}
        out[name] = info
    return out


def undrain(r: Any, machine: str) -> bool:
    """Put a drained machine back (its failure count starts again); False when it was not drained."""
    pipe = r.pipeline()
    pipe.hdel(DRAINED, machine)
    pipe.delete(failures_key(machine))
    return bool(pipe.execute()[0])
