"""The supervisor's progress check on a real redis-server: a job whose lease is renewed but whose progress is stuck is
handed back (a ``hung`` event, requeued at once, a lemon failure on its machine); after max_restarts it fails."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from daemon.progress_watch import ProgressWatch, StallTracker
from jobs.client import Client
from jobs.contract import keys
from jobs.contract.states import JobState
from jobs.redis import lemons
from jobs.redis.store import JobStore
from tests.test_supervisor import claim, spec


def setup(redis_url: str, storage_dir: Path, max_restarts: int) -> tuple[redis.Redis, JobStore, str]:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(spec(max_restarts=max_restarts))
    r = redis.Redis.from_url(redis_url)
    store = JobStore(r)
    r.hset(keys.worker("w1"), mapping={"host": "box", "device": "gpu:0"})
    return r, store, job.id


def test_stuck_progress_with_a_live_lease_is_handed_back(redis_url: str, storage_dir: Path) -> None:
    r, store, job_id = setup(redis_url, storage_dir, max_restarts=3)
    claim(r, store, job_id, 1, "tok1")
    store.fenced_update(job_id, "tok1", fields={"running_epoch": 2, "batch": 40, "progress_timeout_s": 60})
    watch = ProgressWatch(store, StallTracker(factor=2.0, grace_s=30.0), lemons.LemonPolicy(threshold=1))
    assert watch.step(now_ms=1_000_000) == []
    assert watch.step(now_ms=1_000_000 + 150_000) == []  # 150 s <= 2 x 60 + 30
    store.fenced_update(job_id, "tok1", fields={"batch": 41})  # it moved: the clock starts again
    assert watch.step(now_ms=1_000_000 + 200_000) == []
    assert watch.step(now_ms=1_000_000 + 351_000) == [job_id]
    rec = store.raw(job_id)
    assert (rec["state"], rec["attempt"], rec["restarts"]) == (JobState.REQUEUED.value, "2", "1")
    evs = [json.loads(e) for e in r.lrange(keys.events(job_id), 0, -1)]
    hung = next(e for e in evs if e["kind"] == "hung")
    assert (hung["epoch"], hung["batch"], hung["by"], hung["silent_s"]) == (2, 41, "supervisor", 151.0)
    assert lemons.is_drained(r, "box/gpu:0")  # threshold 1: this hang drained the machine


def test_a_job_that_hangs_on_every_attempt_fails_after_max_restarts(redis_url: str, storage_dir: Path) -> None:
    r, store, job_id = setup(redis_url, storage_dir, max_restarts=1)
    watch = ProgressWatch(store, StallTracker(factor=1.0, grace_s=0.0), lemons.LemonPolicy(threshold=0))
    t = 0
    for attempt in (1, 2):
        claim(r, store, job_id, attempt, f"tok{attempt}")
        store.fenced_update(job_id, f"tok{attempt}", fields={"progress_timeout_s": 10})
        watch.step(now_ms=t)
        t += 11_000
        assert watch.step(now_ms=t) == [job_id]
    rec = store.raw(job_id)
    assert rec["state"] == JobState.FAILED.value and rec["reason"] == "hung"
    assert "hung 2 times (max_restarts=1)" in rec["error"]
