"""The real rq-dashboard (not an imitation of its calls) shows the truth about traind, and no traind message makes it
fail: while a traind job trains it is listed as *started* in its queue with its traind id, its detail answers, the
worker is listed busy on it; once the job succeeds nothing is shown as started; a queued traind message (JSON data,
read by the dashboard's default pickle serializer) and foreign messages planted in the same queue never cost a 500.

rq-dashboard runs as its own process, exactly as an operator starts it (``rq-dashboard --redis-url ...``), once with
its defaults (pickle serializer) and once with ``--json --show-full-args`` (JSON serializer, every message's call
string rendered from its data).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq import Queue
from rq.serializers import DefaultSerializer, JSONSerializer

from jobs.client import Client
from jobs.contract import keys
from testkit.cluster import free_port
from tests.conftest import Procs, log_of, wait_for
from tests.security.helpers import plant_rq, rq_payload
from tests.serve.conftest import slow_spec

pytest.importorskip("rq_dashboard", reason="rq-dashboard is not installed (it is in the `dev` extra)")

QUEUE = keys.rq_queue_name("default", "cpu", "default")  # where the default worker takes jobs from
PARKED = keys.rq_queue_name("parked", "cpu", "default")  # no worker serves it: its messages stay queued
REGISTRIES = ("queued", "started", "failed", "deferred", "finished", "scheduled", "canceled")
WORKER_ID = "rqd-w"
RQ_WORKER_NAME = f"traind-{WORKER_ID}"  # the name traind's worker has in RQ's worker registry


class Dashboard:
    """An HTTP client of a running rq-dashboard; every answer is checked to be 200 and JSON where JSON is served."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path, serializer: type[Any]) -> None:
        self.serializer = serializer  # the one it reads RQ job data with
        self.http = httpx.Client(base_url=url, timeout=30.0, follow_redirects=True)
        self.proc = proc
        self.log = log

    def get(self, path: str) -> httpx.Response:
        resp = self.http.get(path)
        assert resp.status_code == 200, (f"rq-dashboard answered {resp.status_code} for {path}, expected 200; "
                                         f"its log:\n{self.log.read_text(errors='replace')[-3000:]}")
        return resp

    def json(self, path: str) -> Any:
        return self.get(path).json()

    def queues(self) -> dict[str, dict[str, Any]]:
        return {q["name"]: q for q in self.json("/0/data/queues.json")["queues"]}

    def jobs(self, queue: str, registry: str) -> list[dict[str, Any]]:
        return self.json(f"/0/data/jobs/{queue}/{registry}/100/asc/1.json")["jobs"]

    def workers(self) -> dict[str, dict[str, Any]]:
        return {w["name"]: w for w in self.json("/0/data/workers.json")["workers"]}

    def every_page(self) -> None:
        """Every list the dashboard serves (JSON and HTML) for every queue and registry answers 200."""
        for page in ("/0/view/queues", "/0/view/workers", "/0/view/jobs"):
            self.get(page)
        self.workers()
        for q in self.queues():
            for reg in REGISTRIES:
                self.jobs(q, reg)
                self.get(f"/0/view/jobs/{q}/{reg}/8/asc/1")


@pytest.fixture(params=[((), DefaultSerializer), (("--json", "--show-full-args"), JSONSerializer)],
                ids=["pickle-default", "json-full-args"])
def dashboard(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> Iterator[Dashboard]:
    flags, serializer = request.param
    port = free_port()
    log = tmp_path / "rq-dashboard.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RQ_DASHBOARD_")}  # its CLI reads these
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rq_dashboard", "--redis-url", redis_url, "--port", str(port),
                                 "--bind", "127.0.0.1", *flags], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    d = Dashboard(f"http://127.0.0.1:{port}", proc, log, serializer)

    def answers() -> bool:
        assert proc.poll() is None, f"rq-dashboard exited with {proc.returncode}: {log.read_text(errors='replace')}"
        try:
            return d.http.get("/0/data/queues.json").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(answers, 60, "rq-dashboard to answer")
        yield d
    finally:
        d.http.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def plant_foreign_messages(r: redis.Redis, serializer: type[Any]) -> list[str]:
    """Messages traind did not write, in a queue the dashboard lists: a well-formed RQ job in the dashboard's own
    serializer (as another RQ app sharing the Redis would enqueue), garbage bytes, JSON of the wrong shape and an id
    with no job hash. Returns the id of the well-formed RQ job (the only one the dashboard lists: the others have no
    ``origin``)."""
    other_app = Queue(PARKED, connection=r, serializer=serializer).enqueue_call(func="os.getcwd", job_id="foreign-rq")
    plant_rq(r, "foreign-garbage", b"\x00\xff\xfegarbage\x80", queue=PARKED)
    plant_rq(r, "foreign-shape", rq_payload(keys.RQ_FUNC, {"job_id": "x"}), queue=PARKED)
    r.rpush(f"rq:queue:{PARKED}", "foreign-ghost-without-hash")
    return [other_app.id]


def test_real_rq_dashboard_shows_running_traind_job_and_never_fails(
    dashboard: Dashboard, redis_url: str, storage_dir: Path, procs: Procs, r: redis.Redis
) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    parked_spec = slow_spec("parked", epochs=1)
    parked_spec["resources"] = {"queue": "parked"}
    parked = client.submit(parked_spec)
    foreign = plant_foreign_messages(r, dashboard.serializer)
    h = client.submit(slow_spec("rq-dashboard-run", epochs=10, batch_delay_s=0.1))
    rq_id = keys.rq_job_id(h.id, 1)
    w = procs.worker(redis_url, storage_dir, "--worker-id", WORKER_ID)

    def running_in_dashboard() -> bool:
        return (client.store.raw(h.id)["state"] == "running"
                and dashboard.queues().get(QUEUE, {}).get("started_job_registry_count") == 1)

    try:
        wait_for(running_in_dashboard, 180, "the job to run and rq-dashboard to count it as started")
    except AssertionError:
        raise AssertionError(log_of(w)) from None

    # -- while it trains ----------------------------------------------------------------------------------------------
    (started,) = dashboard.jobs(QUEUE, "started")
    assert started["id"] == rq_id and h.id in started["description"] and started["started_at"], started
    detail = dashboard.json(f"/0/data/job/{rq_id}.json")
    assert detail["status"] == "started" and detail["origin"] == QUEUE and h.id in detail["description"], detail
    assert detail["result"] is None and detail["exc_info"] is None and detail["metadata"] == "{}", detail
    dashboard.get(f"/0/view/job/{rq_id}")
    workers = dashboard.workers()
    assert RQ_WORKER_NAME in workers, workers
    me = workers[RQ_WORKER_NAME]
    # busy; its current job is not named (jobs/redis/rqview.py records no RQ execution: rendering one would unpickle the
    # JSON message and fail the default dashboard's whole workers page); the job is in the started registry above
    assert me["state"] == "busy" and QUEUE in me["queues"] and me["current_job"] == "idle", me
    assert client.store.raw(h.id)["state"] == "running", "the job ended before the dashboard was read: make it slower"

    # a queued traind message (JSON data) next to foreign messages: the queue's list answers and shows the traind one
    queued = {j["id"]: j for j in dashboard.jobs(PARKED, "queued")}
    parked_rq_id = keys.rq_job_id(parked.id, 1)
    assert parked_rq_id in queued and parked.id in queued[parked_rq_id]["description"], queued
    assert set(foreign) <= set(queued), queued
    assert dashboard.json(f"/0/data/job/{parked_rq_id}.json")["status"] == "queued"
    dashboard.every_page()

    # -- after it succeeded -------------------------------------------------------------------------------------------
    wait_for(lambda: client.store.raw(h.id)["state"] == "succeeded", 240, "the job to succeed")
    # the view is updated right after the transition (not inside its Lua script): wait for the dashboard to agree
    wait_for(lambda: dashboard.queues()[QUEUE]["started_job_registry_count"] == 0, 30,
             "rq-dashboard to show no started job")
    assert dashboard.jobs(QUEUE, "started") == []
    wait_for(lambda: dashboard.workers()[RQ_WORKER_NAME]["state"] == "idle", 30, "the worker to be shown idle")
    assert dashboard.workers()[RQ_WORKER_NAME]["current_job"] == "idle"
    dashboard.every_page()
    assert client.store.raw(parked.id)["state"] == "queued"  # reading the dashboard cost the parked job nothing
    assert r.lrange(f"rq:queue:{PARKED}", 0, 0) == [parked_rq_id.encode()]
