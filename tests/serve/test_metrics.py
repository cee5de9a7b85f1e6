"""/metrics: jobs by state and queue, queue depth, workers, requeues by reason, detection latency, epoch seconds,
checkpoint write seconds/bytes, worker memory; bounded labels (no job ids)."""

from __future__ import annotations

from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from daemon.supervisor import Supervisor
from jobs.client import Client
from jobs.contract.states import JobState
from jobs.settings import SupervisorSettings
from tests.conftest import Procs, log_of, wait_for
from tests.serve.conftest import READ_TOKEN, Served, slow_spec


def scrape(served: Served) -> dict[str, list]:
    with served.client(token=READ_TOKEN) as c:
        resp = c.get("/metrics")
    assert resp.status_code == 200
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(resp.text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(m: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in m.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_after_training_and_a_lost_worker(served: Served, redis_url: str, storage_dir: Path, procs: Procs,
                                                   r: redis.Redis) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    done = client.submit(slow_spec(epochs=3, batch_delay_s=0.01))
    w = procs.worker(redis_url, storage_dir, "--worker-id", "metrics-w")
    try:
        wait_for(lambda: client.store.raw(done.id)["state"] == "succeeded", 240, "the job to succeed")
    except AssertionError:
        raise AssertionError(log_of(w)) from None
    procs.kill_all()  # no worker may take the next job: its lease is made to expire below
    client.store.r.delete("traind:worker:metrics-w")

    # A job whose worker "died": claimed, then the supervisor sees its lease expired and requeues it.
    lost = client.submit({**slow_spec(), "resources": {"queue": "batch"}})
    client.store.transition(lost.id, JobState.RUNNING, attempt=1, fields={"token": "t", "worker": "ghost"},
                            lease_ttl_ms=1)
    sup = Supervisor(SupervisorSettings(redis_url=redis_url, storage_dir=storage_dir, lease_ttl_s=5.0))
    now = client.store.now_ms()
    rep = sup.step(now_ms=now + 60_000)  # well past redis-restart grace and the lease
    assert rep.requeued == [lost.id] or rep.skipped_reason, rep
    if rep.skipped_reason:  # a fresh Redis: wait out its uptime grace, then the same pass requeues
        wait_for(lambda: sup.step(now_ms=client.store.now_ms() + 60_000).requeued == [lost.id], 30, "the requeue")

    m = scrape(served)
    assert value(m, "traind_jobs", state="succeeded", queue="default") == 1
    assert value(m, "traind_jobs", state="requeued", queue="batch") == 1
    # attempt 1's message (never popped: the claim above bypassed the queue) and the requeue's attempt 2
    assert value(m, "traind_queue_depth", queue="batch", device="cpu", priority="default") == 2
    assert value(m, "traind_requeues_total", reason="worker_lost") == 1
    assert value(m, "traind_detection_seconds_count") == 1
    assert value(m, "traind_detection_seconds_sum") >= 5.0  # at least one lease TTL after the last renewal
    assert value(m, "traind_epoch_seconds_count") == 3
    assert value(m, "traind_checkpoint_write_seconds_count") >= 3
    assert value(m, "traind_checkpoint_bytes_sum") > 0
    assert value(m, "traind_workers_alive") == 0  # the worker was killed and unregistered
    for samples in m.values():  # bounded cardinality: no label carries a job id
        for s in samples:
            assert not {"job", "job_id", "id"} & set(s.labels), s
            assert done.id not in str(s.labels.values()) and lost.id not in str(s.labels.values())


def test_worker_gauges_while_a_worker_is_alive(served: Served, redis_url: str, storage_dir: Path,
                                                procs: Procs) -> None:
    procs.worker(redis_url, storage_dir, "--worker-id", "gauge-w")
    with served.client() as c:
        wait_for(lambda: c.get("/api/v1/workers").json(), 120, "the worker to register")
    m = scrape(served)
    assert value(m, "traind_workers_alive") == 1
    assert value(m, "traind_worker_rss_bytes") > 10 * 2**20
