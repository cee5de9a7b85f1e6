"""REST API against a real Redis and a real worker: submit (validation, idempotency), list filters/pagination,
status equal to ``traind status --json``, history/events/checkpoints, cancel, retry, workers, queues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jobs.client import Client
from tests.conftest import ROOT, Procs, log_of, wait_for
from tests.serve.conftest import Served, slow_spec


def _state(c, jid: str) -> str:
    return c.get(f"/api/v1/jobs/{jid}", params={"history": False}).json()["state"]


def test_submit_validates_like_the_cli_and_is_idempotent(served: Served, redis_url: str, storage_dir: Path,
                                                          tmp_path: Path) -> None:
    bad = {"name": "bad", "model": {"builder": "os:system"}, "fit": {"epochs": 0}}
    with served.client() as c:
        resp = c.post("/api/v1/jobs", json={"spec": bad})
        assert resp.status_code == 422
        detail = resp.json()["detail"]
        assert "nothing was submitted" in detail["error"]
        # The CLI prints the same problems for the same spec.
        spec_file = tmp_path / "bad.json"
        spec_file.write_text(json.dumps(bad))
        cli = subprocess.run([sys.executable, "-m", "daemon.cli", "submit", str(spec_file), "--redis-url", redis_url,
                              "--storage", str(storage_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2
        for p in detail["problems"]:
            assert p in cli.stderr
        assert c.get("/api/v1/jobs").json()["total"] == 0

        first = c.post("/api/v1/jobs", json={"spec": slow_spec(), "client_key": "k-1"})
        assert first.status_code == 201 and first.json()["created"] is True
        again = c.post("/api/v1/jobs", json={"spec": slow_spec(), "client_key": "k-1"})
        assert again.status_code == 200 and again.json() == {**first.json(), "created": False}  # a replay
        assert c.get("/api/v1/jobs").json()["total"] == 1
        # unknown field in the body envelope, unknown job, invalid id
        assert c.get("/api/v1/jobs/nope0000").status_code == 404
        assert c.get("/api/v1/jobs/..%2Fetc").status_code in (404, 422)


def test_list_filters_and_pagination(served: Served) -> None:
    with served.client() as c:
        ids = [c.post("/api/v1/jobs", json={"spec": slow_spec(name=f"job-{i}")}).json()["id"] for i in range(7)]
        other = c.post("/api/v1/jobs", json={"spec": {**slow_spec(name="other"),
                                                      "resources": {"queue": "gpu-farm"}}}).json()["id"]
        c.post(f"/api/v1/jobs/{ids[0]}/cancel").raise_for_status()
        page = c.get("/api/v1/jobs", params={"limit": 3}).json()
        assert page["total"] == 8 and [j["id"] for j in page["items"]] == [other, *ids[::-1][:2]]
        page2 = c.get("/api/v1/jobs", params={"limit": 3, "offset": 3}).json()
        assert [j["id"] for j in page2["items"]] == ids[::-1][2:5]
        assert [j["id"] for j in c.get("/api/v1/jobs", params={"state": "cancelled"}).json()["items"]] == [ids[0]]
        assert c.get("/api/v1/jobs", params={"name": "JOB-"}).json()["total"] == 7
        assert [j["id"] for j in c.get("/api/v1/jobs", params={"queue": "gpu-farm"}).json()["items"]] == [other]
        assert c.get("/api/v1/jobs", params={"state": "bogus"}).status_code == 422
        row = page["items"][0]
        assert {"state", "epoch", "epochs", "best_value", "best_epoch", "restarts", "worker", "created_at",
                "monitor"} <= set(row)
        queues = c.get("/api/v1/queues").json()
        depth = {q["name"]: q["depth"] for q in queues}
        assert depth["traind.default.cpu.default"] == 7  # the cancelled job's message stays until a worker drops it
        assert depth["traind.gpu-farm.cpu.default"] == 1


def test_job_trains_and_api_equals_cli_status(served: Served, redis_url: str, storage_dir: Path,
                                               procs: Procs) -> None:
    with served.client() as c:
        jid = c.post("/api/v1/jobs", json={"spec": slow_spec(epochs=3, batch_delay_s=0.01)}).json()["id"]
        w = procs.worker(redis_url, storage_dir, "--worker-id", "api-w1")
        wait_for(lambda: [x for x in c.get("/api/v1/workers").json() if x["id"] == "api-w1"], 120, "worker registry")
        try:
            wait_for(lambda: _state(c, jid) in ("succeeded", "failed"), 240, "the job to finish")
        except AssertionError:
            raise AssertionError(log_of(w)) from None
        st = c.get(f"/api/v1/jobs/{jid}").json()
        assert st["state"] == "succeeded", st.get("error")
        cli = subprocess.run([sys.executable, "-m", "daemon.cli", "status", jid, "--json", "--redis-url", redis_url],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == json.loads(json.dumps(st, default=str))
        hist = c.get(f"/api/v1/jobs/{jid}/history").json()
        assert [h["epoch"] for h in hist] == [1, 2, 3] and hist == st["history"]
        assert {"loss", "val_loss", "learning_rate"} <= set(hist[0])
        events = c.get(f"/api/v1/jobs/{jid}/events").json()
        assert events[0]["msg"] == "submitted" and any("epoch 3" in e["msg"] for e in events)
        ckpts = c.get(f"/api/v1/jobs/{jid}/checkpoints").json()
        assert ckpts and ckpts[-1]["epoch"] == 3 and "token" not in json.dumps(st)
        workers = c.get("/api/v1/workers").json()
        me = next(x for x in workers if x["id"] == "api-w1")
        assert me["rss_mb"] > 0 and me["device"] == "cpu" and me["heartbeat_age_s"] < 60
        assert "gpu_mem_mb" in me

        # cancel a queued job, then retry it: it runs again (new attempt) and succeeds
        # ~1.5 s an epoch: a worker that claims it at once (the job switch takes ~30 ms) still runs it when the
        # cancel reaches it at its next heartbeat (1 s); at 0.01 s a batch it could finish first (CI saw it succeed)
        jid2 = c.post("/api/v1/jobs", json={"spec": slow_spec(epochs=2, batch_delay_s=0.3)}).json()["id"]
        resp = c.post(f"/api/v1/jobs/{jid2}/cancel").json()
        if resp["previous"] == "running":  # the idle worker may have claimed it first
            wait_for(lambda: _state(c, jid2) == "cancelled", 120, "the cancel")
        assert c.post(f"/api/v1/jobs/{jid}/retry").status_code == 409  # succeeded: nothing to retry
        r = c.post(f"/api/v1/jobs/{jid2}/retry")
        assert r.status_code == 200 and r.json()["attempt"] == 2
        wait_for(lambda: _state(c, jid2) == "succeeded", 240, "the retried job to succeed")
        st2 = Client(redis_url=redis_url, storage=storage_dir).store.get(jid2)
        assert st2["attempt"] == 2 and any("retried by an operator" in e["msg"]
                                           for e in c.get(f"/api/v1/jobs/{jid2}/events").json())
        assert st2.get("finished_at") and st2.get("error") is None


def test_openapi_schema_lists_the_api(served: Served) -> None:
    with served.client(token=None) as c:
        schema = c.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/history", "/api/v1/jobs/{job_id}/events",
            "/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/retry", "/api/v1/workers", "/api/v1/queues",
            "/api/v1/jobs/{job_id}/stream", "/api/v1/stream"} <= paths
