"""Lemon machines on a real redis-server: repeated failures within the window drain a machine; undrain restores."""

from __future__ import annotations

import redis

from jobs.redis import lemons
from jobs.redis.lemons import LemonPolicy


def test_three_failures_in_the_window_drain_and_undrain_restores(r: redis.Redis) -> None:
    p = LemonPolicy(threshold=3, window_s=60)
    m = lemons.machine_of("host-a", "gpu:0")
    assert not lemons.record_failure(r, m, kind="hung", job_id="j1", now_ms=1_000, policy=p)
    assert not lemons.record_failure(r, m, kind="lost", job_id="j2", now_ms=70_000, policy=p)  # j1 is out of window
    assert not lemons.record_failure(r, m, kind="lost", job_id="j3", now_ms=80_000, policy=p)
    assert not lemons.is_drained(r, m)
    assert lemons.record_failure(r, m, kind="hung", job_id="j4", now_ms=90_000, policy=p)
    assert lemons.is_drained(r, m) and not lemons.is_drained(r, lemons.machine_of("host-a", "gpu:1"))
    info = lemons.drained(r)[m]
    assert info["since_ms"] == 90_000 and "3 failed attempts" in info["reason"] and "j4" in info["reason"]
    assert not lemons.record_failure(r, m, kind="hung", job_id="j5", now_ms=91_000, policy=p)  # already drained
    assert lemons.undrain(r, m) and not lemons.is_drained(r, m) and not lemons.undrain(r, m)
    assert not lemons.record_failure(r, m, kind="hung", job_id="j6", now_ms=92_000, policy=p)  # count restarted


def test_malformed_drained_entry_is_one_bad_row_and_threshold_zero_never_drains(r: redis.Redis) -> None:
    r.hset(lemons.DRAINED, "h/cpu", b"\xff not json")
    r.hset(lemons.DRAINED, "h2/cpu", '{"since_ms": 5, "reason": "x"}')
    rows = lemons.drained(r)
    assert rows["h2/cpu"]["since_ms"] == 5 and rows["h/cpu"]["since_ms"] is None
    off = LemonPolicy(threshold=0)
    assert not any(lemons.record_failure(r, "h3/cpu", kind="lost", job_id=f"j{i}", now_ms=i, policy=off)
                   for i in range(10))
