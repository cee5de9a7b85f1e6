"""``resources.gpus: N`` jobs go to queues that only workers with at least N devices pop: a 1-device worker never
takes (and fails) a job another worker could run. One-device queue names are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from daemon import render
from jobs.client import Client
from jobs.contract import keys
from jobs.contract.queue import pop, queue_contents
from jobs.ops import admin
from jobs.ops.lookup import placement_note
from jobs.settings import WorkerSettings
from tests.conftest import Procs, log_of, wait_for
from worker.runner import Worker

PRIOS = ("high", "default", "low")


def spec(name: str, gpus: int) -> dict:
    return {
        "name": name,
        "model": {"builder": "examples.regression:build_model", "builder_kwargs": {"units": 4}},
        "data": {"loader": "examples.regression:load_data", "loader_kwargs": {"n": 200}},
        "fit": {"epochs": 1, "batch_size": 50, "validation_split": 0.25},
        "resources": {"gpus": gpus},
    }


def test_queue_names() -> None:
    assert keys.rq_queue_name("default", "cpu", "default") == "traind.default.cpu.default"  # as before routing
    assert keys.rq_queue_name("default", "cpu", "default", 1) == "traind.default.cpu.default"
    assert keys.rq_queue_name("farm", "gpu", "high", 4) == "traind.farm.gpu-x4.high"
    assert keys.parse_rq_queue_name("traind.farm.gpu-x4.high") == {
        "queue": "farm", "device": "gpu-x4", "kind": "gpu", "devices": 4, "priority": "high"}
    assert keys.parse_rq_queue_name("traind.default.cpu.low")["devices"] == 1
    assert keys.parse_rq_queue_name("rq.other") is None
    with pytest.raises(ValueError, match="devices: expected a count >= 1, received 0"):
        keys.rq_queue_name("default", "cpu", "default", 0)


def test_worker_queues_by_device_count() -> None:
    one = [f"traind.{q}.cpu.{p}" for q in ("default", "b") for p in PRIOS]
    assert keys.worker_queue_names(["default", "b"], "cpu", 1) == one
    two = keys.worker_queue_names(["default", "b"], "cpu", 2)
    assert two == [f"traind.{q}.cpu-x2.{p}" for q in ("default", "b") for p in PRIOS] + one  # the 2-device jobs first
    assert keys.worker_queue_names(["default"], "gpu", 3)[::3] == [
        "traind.default.gpu-x3.high", "traind.default.gpu-x2.high", "traind.default.gpu.high"]


def test_two_device_job_is_popped_only_by_a_two_device_worker(redis_url: str, r: redis.Redis,
                                                              storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(spec("two", 2))
    q2 = "traind.default.cpu-x2.default"
    assert client.store.raw(job.id)["queue"] == q2  # what a requeue or retry delivers to again
    assert queue_contents(r, q2) == {keys.rq_job_id(job.id, 1)}
    assert pop(r, keys.worker_queue_names(["default"], "cpu", 1), 0.05) is None
    d = pop(r, keys.worker_queue_names(["default"], "cpu", 2), 0.05)
    assert d is not None and d.message is not None and d.message.job_id == job.id and d.queue == q2


def test_one_device_worker_leaves_the_two_device_job_to_a_two_device_worker(
        redis_url: str, storage_dir: Path, procs: Procs) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    two, one = client.submit(spec("two", 2)), client.submit(spec("one", 1))
    w = Worker(WorkerSettings(redis_url=redis_url, storage_dir=storage_dir, burst=True, dequeue_timeout_s=0.2))
    assert w.devices == 1 and not any("-x" in q for q in w.queues), w.queues  # this process: one CPU device
    w.register()
    assert [x["devices"] for x in admin.workers(client.store)] == [1]  # shown by `traind workers --json`
    # `traind status` says why the job waits (the only live worker has one device) and how to start one that fits
    note = placement_note(client.r, two.status())
    assert note == ("waits for a worker with 2 cpu devices (resources.gpus: 2): the 1 live cpu workers have at most 1; "
                    "start one with `TRAIND_LOGICAL_CPUS=2 traind worker`"), note
    assert "note" in render.status_block({**two.status(), "note": note})
    assert placement_note(client.r, one.status()) is None
    w.run()
    assert one.status()["state"] == "succeeded" and two.status()["state"] == "queued"
    [waiting] = [q for q in admin.queues(client.store) if q["depth"]]
    assert (waiting["device"], waiting["kind"], waiting["devices"]) == ("cpu-x2", "cpu", 2)
    assert "none is live" in (placement_note(client.r, two.status()) or "")  # the burst worker has left

    p = procs.worker(redis_url, storage_dir, "--burst", env={"TRAIND_LOGICAL_CPUS": "2"}, name="w2")
    st = wait_for(lambda: (s := two.status())["state"] in ("succeeded", "failed") and s, 180, "the 2-device job")
    assert st["state"] == "succeeded", (st.get("error"), log_of(p))
    assert placement_note(client.r, st) is None
    assert any("MirroredStrategy" in e.get("msg", "") for e in two.events()), two.events()
    assert p.wait(60) == 0, log_of(p)  # a burst worker: nothing left that it could run
