"""Fair share between owners and per-owner limits with real worker processes, Redis and tiny Keras jobs (issue 24):

* one worker, alice submits 4 jobs and then bob 2: bob's jobs start among the first four, not after alice's four;
* two workers, carol limited to 1 running job: her two jobs never overlap, dave's job passes her second, and while
  she is at her limit that job's status (CLI and API) says so, with its position; /metrics and the list per owner.

Both phases share one pair of workers (a worker's TensorFlow start is the expensive part): worker ``fair-a`` serves
queues ``default`` and ``lim``, worker ``fair-b`` only ``lim``, so phase one has exactly one worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from jobs.contract.states import JobState
from tests.conftest import Procs, wait_for
from tests.fault.helpers import RUN_S, Cluster, job_spec
from tests.serve.conftest import TOKEN, Served
from tests.serve.conftest import served as served  # noqa: F401 - the fixture, used by name

ENV = {"TRAIND_OWNER_LIMITS": "carol=1"}


def spec(name: str, epochs: int, queue: str = "default") -> dict[str, Any]:
    s = job_spec(name, epochs=epochs)
    s["resources"] = {"queue": queue}
    s["data"]["loader_kwargs"] = {"n": 200}  # 5 batches of 30 ms an epoch: the jobs' own time stays small
    return s


def test_fair_order_and_owner_limit(procs: Procs, redis_url: str, storage_dir: Path, served: Served,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    c = Cluster(procs, redis_url, storage_dir, env=ENV)
    for wid, queues in (("fair-a", "default,lim"), ("fair-b", "lim")):
        c.workers[wid] = procs.worker(redis_url, storage_dir, "--worker-id", wid, "--queues", queues, env=c.env,
                                      name=wid)
    # phase 1: all six queued before the worker takes the first (it is still importing TensorFlow)
    alice = [c.client.submit(spec(f"a{i}", 1), owner="alice").id for i in range(4)]
    bob = [c.client.submit(spec(f"b{i}", 1), owner="bob").id for i in range(2)]
    c.wait_registered("fair-a", "fair-b")
    st = c.store.get(bob[1], with_history=False)
    assert st["owner"] == "bob"

    def done(ids: list[str]) -> bool:
        states = [c.store.record(j).state for j in ids]
        assert JobState.FAILED.value not in states, c.logs()
        return all(s == JobState.SUCCEEDED.value for s in states)

    wait_for(lambda: done(alice + bob), RUN_S, "alice's and bob's jobs to finish")
    order = sorted(alice + bob, key=lambda j: c.store.record(j).started_at or 0)
    assert {c.store.record(j).worker for j in order} == {"fair-a"}
    starts = [order.index(b) for b in bob]
    assert max(starts) <= 3, f"bob's jobs started {starts} (0-based) of {len(order)}: they waited for alice's"
    assert order[0] == alice[0]  # nobody had used anything yet: the oldest

    # phase 2: carol (limit 1) submits two, dave one, on the queue both workers serve
    # carol's first job is long enough (8 epochs) to be read while it runs; the others only need to start
    carol = [c.client.submit(spec(f"c{i}", epochs, "lim"), owner="carol").id for i, epochs in enumerate((8, 1))]
    dave = c.client.submit(spec("d0", 1, "lim"), owner="dave").id
    wait_for(lambda: c.store.record(carol[0]).state == JobState.RUNNING.value, RUN_S, "carol's first job to run")
    wait_for(lambda: c.store.record(dave).state in (JobState.RUNNING.value, JobState.SUCCEEDED.value), RUN_S,
             "dave's job to pass carol's queued one on the second worker")
    capsys.readouterr()
    assert main(["status", carol[1], "--json", "--redis-url", redis_url, "--storage", str(storage_dir)]) == 0
    cli_why = json.loads(capsys.readouterr().out)["waiting"]
    assert main(["status", carol[1], "--redis-url", redis_url, "--storage", str(storage_dir)]) == 0
    text = capsys.readouterr().out
    with served.client(TOKEN) as http:
        api_why = http.get(f"/api/v1/jobs/{carol[1]}", params={"history": "false"}).json()["waiting"]
        metrics = http.get("/metrics").text
        listed = http.get("/api/v1/jobs", params={"owner": "carol"}).json()
    # the reads above saw carol at her limit only if her first job was still running after them (5 epochs: ~3 s)
    assert c.store.record(carol[0]).state == JobState.RUNNING.value, "carol's first job ended before the reads"
    for why in (cli_why, api_why):
        assert (why["kind"], why["owner"], why["owner_running"], why["owner_limit"], why["position"]) == \
            ("owner_limit", "carol", 1, 1, 1), why
        assert why["message"].startswith("owner limit reached: carol runs 1 of 1 allowed job(s)"), why
    assert "owner limit reached: carol runs 1 of 1" in text and "position 1 of 1 in traind.lim.cpu.default" in text
    assert 'traind_owner_jobs_running{owner="carol"} 1.0' in metrics, metrics
    assert 'traind_owner_jobs_queued{owner="carol"} 1.0' in metrics, metrics
    assert {j["id"] for j in listed["items"]} == set(carol) and listed["exact"], listed
    assert {j["owner"] for j in listed["items"]} == {"carol"}
    wait_for(lambda: done([*carol, dave]), RUN_S * 2, "carol's and dave's jobs to finish")
    first, second = (c.store.record(j) for j in carol)
    assert (second.started_at or 0) >= (first.finished_at or 0), "carol ran two jobs at once despite her limit of 1"
