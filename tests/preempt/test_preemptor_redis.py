"""The supervisor's preemption pass against a real redis-server with planted records (no TensorFlow): what it
reads, the atomic flag the heartbeat sees, one victim per waiting job across supervisors, bad rows."""

from __future__ import annotations

import json

import redis

from daemon.preemptor import Preemptor
from jobs.contract import keys
from jobs.contract.events import EventKind
from jobs.contract.queue import queue_key
from jobs.redis.store import JobStore
from jobs.settings import SupervisorSettings


def settings(url: str, min_run_s: float = 0.0) -> SupervisorSettings:
    return SupervisorSettings(redis_url=url, preempt_min_run_s=min_run_s)


def worker(r: redis.Redis, wid: str, now: int, queues: str = "default", devices: str = "1") -> None:
    r.hset(keys.worker(wid), mapping={"device": "cpu", "devices": devices, "queues": queues, "seen": now})
    r.zadd(keys.WORKERS, {wid: now})


def running(r: redis.Redis, job: str, wid: str, priority: str, started: int, spec: object = None) -> None:
    r.hset(keys.job(job), mapping={"state": "running", "attempt": "1", "worker": wid, "started_at": started,
                                   "queue": f"traind.default.cpu.{priority}",
                                   "spec": json.dumps(spec if spec is not None else {"name": job})})
    r.set(keys.token(job), f"tok-{job}")
    r.sadd(keys.state_index("running"), job)


def waiting(r: redis.Redis, job: str, priority: str, now: int) -> None:
    q = f"traind.default.cpu.{priority}"
    r.hset(keys.job(job), mapping={"state": "queued", "attempt": "1", "queue": q, "updated_at": now})
    r.sadd(keys.RQ_QUEUES, queue_key(q))  # as RQ records it
    r.rpush(queue_key(q), keys.rq_job_id(job, 1))


def low_blocks_high(r: redis.Redis, redis_url: str) -> tuple[JobStore, int, Preemptor]:
    """One worker running low job lo1 (for 5 s), high job hi1 waiting: the store, the time and a preemptor."""
    store = JobStore(r)
    now = store.now_ms()
    worker(r, "w1", now)
    running(r, "lo1", "w1", "low", now - 5000)
    waiting(r, "hi1", "high", now)
    return store, now, Preemptor(store, settings(redis_url))


def test_flags_the_victim_atomically_and_its_heartbeat_sees_for_whom(r: redis.Redis, redis_url: str) -> None:
    store, now, p = low_blocks_high(r, redis_url)
    assert p.step(now) == ["lo1"]
    assert r.hget(keys.job("lo1"), "preempt_requested") == b"hi1"
    beat = store.beat("lo1", "tok-lo1", 5000)
    assert (beat.owner, beat.cancel, beat.preempt_for) == (True, False, "hi1")
    assert store.heartbeat("lo1", "tok-lo1", 5000) == (True, False)  # the old two-flag form is unchanged
    assert store.beat("lo1", "wrong", 5000).preempt_for is None  # only the owner learns it
    ev = [e for e in store.events("lo1") if e["kind"] == EventKind.PREEMPT_REQUESTED.value]
    assert [(e["by"], e["priority"]) for e in ev] == [("hi1", "high")]
    assert [e["victim"] for e in store.events("hi1") if e["kind"] == EventKind.PREEMPT_REQUESTED.value] == ["lo1"]
    # the next passes (this supervisor or another) request nothing more for hi1
    assert p.step(now) == [] and Preemptor(store, settings(redis_url)).step(now) == []


def test_one_victim_per_waiting_job_across_supervisors(r: redis.Redis, redis_url: str) -> None:
    store = JobStore(r)
    now = store.now_ms()
    for w, j in (("w1", "lo1"), ("w2", "lo2")):
        worker(r, w, now)
        running(r, j, w, "low", now - 5000)
    waiting(r, "hi1", "high", now)
    a, b = Preemptor(store, settings(redis_url)), Preemptor(store, settings(redis_url))
    assert a.step(now) == ["lo2"]  # equal start times: the larger id
    # Supervisor b decided on the same snapshot but another victim: the claim key refuses the second flag.
    res = b._request(keys=[keys.job("lo1"), keys.events("lo1"), keys.preempt_claim("hi1")],
                     args=["lo1", "1", "hi1", json.dumps({"kind": "note", "msg": "x"}), 100, 60_000, keys.job("")])
    assert res == b"taken" and r.hget(keys.job("lo1"), "preempt_requested") is None


def test_withdrawn_when_the_waiting_job_was_taken_elsewhere(r: redis.Redis, redis_url: str) -> None:
    store, now, p = low_blocks_high(r, redis_url)
    assert p.step(now) == ["lo1"]
    r.hset(keys.job("hi1"), "state", "running")  # another worker took it before lo1's worker acted
    r.delete(queue_key("traind.default.cpu.high"))
    assert p.step(now) == []
    assert r.hget(keys.job("lo1"), "preempt_requested") is None
    assert "no longer waits" in store.events("lo1")[-1]["msg"]


def test_min_run_not_preemptible_and_bad_rows(r: redis.Redis, redis_url: str) -> None:
    store = JobStore(r)
    now = store.now_ms()
    for w in ("w1", "w2", "w3", "w4"):
        worker(r, w, now)
    r.hset(keys.worker("w5"), mapping={"device": "cpu", "devices": "many", "queues": "default"})  # bad row
    r.zadd(keys.WORKERS, {"w5": now})
    running(r, "young", "w1", "low", now - 1000)
    running(r, "optout", "w2", "low", now - 600_000, spec={"name": "o", "preemptible": False})
    running(r, "junkspec", "w3", "low", now - 600_000)
    r.hset(keys.job("junkspec"), "spec", "{not json")
    running(r, "junkstart", "w4", "low", 0)
    r.hset(keys.job("junkstart"), "started_at", "inf")
    r.set(keys.job("badtype"), "x")  # a WRONGTYPE record in the running index
    r.sadd(keys.state_index("running"), "badtype")
    waiting(r, "hi1", "high", now)
    p = Preemptor(store, settings(redis_url, min_run_s=60))
    for _ in range(3):
        assert p.step(now) == []
    counters = {k.decode(): float(v) for k, v in r.hgetall(keys.METRICS_COUNTERS).items()}
    assert counters == {"preemptions_held:min_run": 3.0}
    # Past the minimum the young job is the one victim; the opted-out and unreadable ones never are.
    later = now + 60_000
    r.zadd(keys.WORKERS, {w: later for w in ("w1", "w2", "w3", "w4", "w5")})  # still alive then
    assert p.step(later) == ["young"]

    # /metrics exports what the passes counted (the bad rows above must not break a scrape)
    from prometheus_client import CollectorRegistry, generate_latest

    from daemon.serve.metrics import TraindCollector

    registry = CollectorRegistry()
    registry.register(TraindCollector(store, lease_ttl_s=5.0))
    text = generate_latest(registry).decode()
    assert "traind_preemptions_requested_total 1.0" in text, text
    assert 'traind_preemptions_held_total{reason="min_run"} 3.0' in text, text
    assert 'traind_preemptions_held_total{reason="not_preemptible"} 0.0' in text, text
