"""Fleet goodput on a real redis-server: a finished job's split is counted once, and /metrics' collector exposes
badput seconds per reason, the goodput ratio and drained machines, without job labels."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from daemon.serve.metrics import TraindCollector
from jobs.client import Client
from jobs.contract import keys
from jobs.contract.states import JobState
from jobs.redis import lemons
from jobs.redis.badput import record_finished
from jobs.redis.store import JobStore
from tests.conftest import wait_for
from tests.test_supervisor import spec


def test_finished_job_counted_once_and_exposed(redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    job = Client(redis_url=redis_url, storage=storage_dir).submit(spec())
    store = JobStore(r)
    assert record_finished(store, job.id) is None  # not finished: nothing counted, nothing flagged
    t0 = store.now_ms()
    store.transition(job.id, JobState.RUNNING, attempt=1, fields={"token": "t", "worker": "w"}, lease_ttl_ms=5000)
    for ev in ({"kind": "training", "ts": t0 + 1}, {"kind": "hung", "ts": t0 + 5, "silent_s": 0.002}):
        r.rpush(keys.events(job.id), json.dumps(ev))
    r.rpush(keys.events(job.id), b"{not json")  # a malformed event is one bad row
    wait_for(lambda: store.now_ms() > t0 + 10, 5, "Redis' clock past the events above")  # the end comes after them
    store.transition(job.id, JobState.FAILED, token="t", event_msg="failed: hung")
    g = record_finished(store, job.id)
    assert g is not None and g.detection_s > 0 and record_finished(store, job.id) is None  # once
    assert store.get(job.id)["goodput"]["wall_s"] == g.wall_s
    lemons.record_failure(r, "box/gpu:1", kind="hung", job_id=job.id, now_ms=t0, policy=lemons.LemonPolicy(1))

    fams = {f.name: f for f in TraindCollector(store, 5.0).collect()}
    bad = {s.labels["reason"]: s.value for s in fams["traind_badput_seconds"].samples if s.name.endswith("_total")}
    assert set(bad) == {"queued", "starting", "checkpoint", "redone", "detection", "restart"}
    assert abs(bad["detection"] - g.detection_s) < 1e-6
    ratio = fams["traind_goodput_ratio"].samples[0].value
    assert abs(ratio - g.productive_s / g.wall_s) < 1e-6
    drained = [s.labels for s in fams["traind_machines_drained"].samples]
    assert drained == [{"host": "box", "device": "gpu:1"}]
    for f in fams.values():
        for s in f.samples:
            assert job.id not in str(s.labels.values())
