"""RQ's tools show the truth: while a traind job trains, ``rq info`` counts it as executing and RQ's default (pickle)
serializer can read its message the way rq-dashboard does; RQ's cleanup never fails it; it is gone afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from jobs.client import Client
from tests.conftest import Procs, log_of, wait_for
from tests.serve.conftest import slow_spec

QUEUE = "traind.default.cpu.default"


def rq_info(url: str) -> str:
    out = subprocess.run([sys.executable, "-m", "rq.cli", "info", "--url", url],
                         capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def test_running_job_is_executing_in_rq_and_readable_by_rq_dashboard(redis_url: str, storage_dir: Path,
                                                                      procs: Procs, r: redis.Redis) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    h = client.submit(slow_spec(epochs=6, batch_delay_s=0.1))
    w = procs.worker(redis_url, storage_dir, "--worker-id", "rq-view-w")
    reg = StartedJobRegistry(QUEUE, connection=r)
    try:
        wait_for(lambda: client.store.raw(h.id)["state"] == "running" and reg.get_job_count(cleanup=False) == 1, 180,
                 "the job to run")
    except AssertionError:
        raise AssertionError(log_of(w)) from None
    info = rq_info(redis_url)
    assert "1 executing" in info and "1 workers" in info and "traind-rq-view-w" in info, info
    from rq import Worker

    (rw,) = Worker.all(connection=r)
    assert rw.get_state() == "busy" and rw.hostname and QUEUE in rw.queue_names()
    reg.cleanup(timestamp=time.time() + 10 * 365 * 86400)  # RQ's maintenance, ten years on: not abandoned
    assert reg.get_job_ids(cleanup=False) == [f"{h.id}-a1"]
    job = Job.fetch(f"{h.id}-a1", connection=r)  # rq-dashboard's defaults: the pickle serializer
    assert job.get_status() == JobStatus.STARTED and job.worker_name == "rq-view-w"
    assert h.id in job.description and job.origin == QUEUE
    assert job.get_meta() == {} and job.latest_result() is None and job.return_value() is None
    assert job.started_at is not None and job.created_at is not None

    wait_for(lambda: client.store.raw(h.id)["state"] == "succeeded", 240, "the job to succeed")
    # mirrored right after the transition (not inside its Lua script): wait for it
    wait_for(lambda: reg.get_job_count(cleanup=False) == 0, 30, "the started registry to empty")
    assert not r.exists(Job.key_for(f"{h.id}-a1")) and not r.exists(f"traind:job:{h.id}:rq")
    assert "0 executing" in rq_info(redis_url)
