"""The worker's registry heartbeat: ``seen`` and the workers zset on every beat, the whole entry (RQ's view too) only
when the current job changes or the refresh is due (bench.scale: the full write was ~1/3 of a worker's commands)."""

from __future__ import annotations

from pathlib import Path

import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.ops import admin
from jobs.settings import WorkerSettings
from worker.runner import Worker


def test_beats_write_seen_and_the_full_entry_only_on_change(redis_url: str, r: redis.Redis,
                                                              storage_dir: Path) -> None:
    w = Worker(WorkerSettings(redis_url=redis_url, storage_dir=storage_dir, burst=True, dequeue_timeout_s=0.1))
    key = keys.worker(w.id)
    w.register()
    assert r.hget(key, "host") and r.pttl(key) > 0 and r.zscore(keys.WORKERS, w.id) is not None
    r.hset(key, "host", "stale")  # only a full write puts it back
    seen0 = int(r.hget(key, "seen"))
    r.zadd(keys.WORKERS, {w.id: 1})
    w.register()  # nothing changed: the light beat
    assert r.hget(key, "host") == b"stale"
    assert int(r.hget(key, "seen")) >= seen0 and r.zscore(keys.WORKERS, w.id) >= seen0
    w.register("job-1")  # the current job changed: the whole entry
    assert r.hget(key, "host") != b"stale" and r.hget(key, "job") == b"job-1"
    r.hset(key, "host", "stale")
    w.register("job-1")
    assert r.hget(key, "host") == b"stale"
    w._reg_next = 0.0  # the refresh is due
    w.register("job-1")
    assert r.hget(key, "host") != b"stale"
    w.register()  # idle again: the job field goes at once
    assert r.hget(key, "job") is None
    [shown] = admin.workers(Client(redis_url=redis_url, storage=storage_dir).store)
    assert shown["id"] == w.id and shown["heartbeat_age_s"] < 5 and not shown.get("job")
