"""Issue 21.5: one malformed Redis record is one bad row, never a broken reader.

Each case plants a bad record next to good jobs in a real redis-server and reads through a real ``traind serve``
(uvicorn over HTTP), the real ``traind`` CLI (a subprocess) or a real supervisor step: every reader answers, the good
rows are intact, the bad one is marked (``problems``) or skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis

from daemon.supervisor import Supervisor
from jobs.client import Client
from jobs.contract import keys
from jobs.contract.states import JobState
from jobs.settings import SupervisorSettings
from testkit.cluster import wait_for
from tests.conftest import ROOT
from tests.serve.conftest import Served, slow_spec
from tests.serve.test_sse import SSEReader


def _cli(redis_url: str, storage_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args, "--redis-url", redis_url, "--storage",
                           str(storage_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _jobs(redis_url: str, storage_dir: Path, n: int = 2) -> tuple[Client, list[str]]:
    client = Client(redis_url=redis_url, storage=storage_dir)
    return client, [client.submit(slow_spec(name=f"job-{i}")).id for i in range(n)]


def test_infinite_epoch_is_one_marked_row(served: Served, redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    _, (bad, good) = _jobs(redis_url, storage_dir)
    r.hset(keys.job(bad), mapping={"epoch": "inf", "best_value": "nan"})
    with served.client() as c:
        page = c.get("/api/v1/jobs")
        assert page.status_code == 200, page.text
        rows = {j["id"]: j for j in page.json()["items"]}
        assert rows[good].get("problems") is None and rows[good]["epoch"] == 0
        assert rows[bad]["epoch"] == 0 and any(p.startswith("epoch:") for p in rows[bad]["problems"])
        st = c.get(f"/api/v1/jobs/{bad}")
        assert st.status_code == 200 and st.json()["best_value"] is None
    out = _cli(redis_url, storage_dir, "status", bad)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    out = _cli(redis_url, storage_dir, "list")
    assert out.returncode == 0 and "job-0" in out.stdout and "job-1" in out.stdout, out.stderr
    out = _cli(redis_url, storage_dir, "list", "--json")
    assert out.returncode == 0 and {j["id"] for j in json.loads(out.stdout)} == {good, bad}, out.stderr


def test_wrong_type_key_in_the_jobs_index(served: Served, redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    _, (a, b) = _jobs(redis_url, storage_dir)
    r.set(keys.job("planted1"), "not a hash")
    r.zadd(keys.JOBS_INDEX, {"planted1": 9e12})  # newest: first on every page
    r.sadd(keys.state_index("queued"), "planted1")
    r.zadd(keys.state_zindex("queued"), {"planted1": 9e12})
    r.hset(keys.IDX_NAMES, "planted1", "job-planted")
    with served.client() as c:
        for params in ({}, {"name": "job-"}, {"state": "queued"}):
            resp = c.get("/api/v1/jobs", params=params)
            assert resp.status_code == 200, (params, resp.text)
            assert {j["id"] for j in resp.json()["items"]} == {a, b}, params
        assert c.get("/api/v1/jobs/planted1").status_code == 404
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and 'traind_jobs{queue="default",state="queued"} 2.0' in metrics.text
    out = _cli(redis_url, storage_dir, "list")
    assert out.returncode == 0 and "job-0" in out.stdout and "job-1" in out.stdout, out.stderr
    out = _cli(redis_url, storage_dir, "list", "--json")
    assert out.returncode == 0 and {j["id"] for j in json.loads(out.stdout)} == {a, b}, out.stderr


def test_worker_hash_with_a_bad_pid(served: Served, redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    now = Client(redis_url=redis_url, storage=storage_dir).store.now_ms()
    r.hset(keys.worker("w-bad"), mapping={"host": "h", "pid": "abc", "seen": str(now), "rss_mb": "1e999x"})
    r.hset(keys.worker("w-good"), mapping={"host": "h", "pid": "12", "seen": str(now), "rss_mb": "10.5",
                                           "device": "cpu"})
    r.zadd(keys.WORKERS, {"w-bad": now, "w-good": now})
    with served.client() as c:
        resp = c.get("/api/v1/workers")
        assert resp.status_code == 200, resp.text
        ws = {w["id"]: w for w in resp.json()}
        assert ws["w-good"]["pid"] == 12 and "problems" not in ws["w-good"]
        assert ws["w-bad"]["pid"] is None and ws["w-bad"]["problems"]
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and "traind_workers_alive 2.0" in metrics.text
    out = _cli(redis_url, storage_dir, "workers")
    assert out.returncode == 0 and "w-bad" in out.stdout and "w-good" in out.stdout, out.stderr
    out = _cli(redis_url, storage_dir, "health", "--worker", "w-bad", "--max-age-s", "3600")  # a slow machine
    assert out.returncode == 0, out.stderr


def test_non_utf8_field_corrupt_spec_and_checkpoints(served: Served, redis_url: str, storage_dir: Path,
                                                      r: redis.Redis) -> None:
    _, (bad, good) = _jobs(redis_url, storage_dir)
    r.hset(keys.job(bad), mapping={"name": b"\xff\xfe bad", "spec": "[1, 2"})
    r.hset(keys.checkpoints(bad), mapping={"1": "not json", "2": json.dumps({"epoch": 2}), "x": "{}"})
    with served.client() as c:
        st = c.get(f"/api/v1/jobs/{bad}")
        assert st.status_code == 200, st.text
        assert "not UTF-8" in " ".join(st.json()["problems"]) and "spec: not a JSON object" in st.json()["problems"]
        assert c.get(f"/api/v1/jobs/{bad}/spec").json() == {}
        assert c.get(f"/api/v1/jobs/{bad}/checkpoints").json() == [{"epoch": 2}]
        assert c.get(f"/api/v1/jobs/{good}").json().get("problems") is None
        assert c.get("/api/v1/jobs").status_code == 200
    out = _cli(redis_url, storage_dir, "status", bad)
    assert out.returncode == 0, out.stderr


def test_bad_events_are_marked_rows(served: Served, redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    _, (bad, _good) = _jobs(redis_url, storage_dir)
    r.rpush(keys.events(bad), json.dumps({"kind": "note", "msg": "bad ts", "ts": "abc"}))
    with served.client() as c:
        events = c.get(f"/api/v1/jobs/{bad}/events").json()
        assert [type(e["ts"]) for e in events] == [int, int]  # the dashboard sorts and formats by ts
        r.rpush(keys.events(bad), b"not json {", b"\xff")
        evs = c.get(f"/api/v1/jobs/{bad}/events")
        assert evs.status_code == 200, evs.text
        events = evs.json()
        assert events[0]["msg"] == "submitted" and len(events) == 4
        assert all(isinstance(e["ts"], int) for e in events)
        assert [e.get("problems") is not None for e in events] == [False, True, True, True]
    stream = SSEReader(served, f"/api/v1/jobs/{bad}/stream")
    try:
        wait_for(lambda: stream.of("snapshot"), 30, "the snapshot")
        assert len(stream.of("snapshot")[0]["events"]) == 4
        Client(redis_url=redis_url, storage=storage_dir).store.request_cancel(bad)  # a change: the stream goes on
        wait_for(lambda: any(s["state"] == "cancelled" for s in stream.of("status")), 30, "the cancelled status")
        wait_for(lambda: any(e["msg"] == "cancelled before it started" for evs in stream.of("events") for e in evs), 30,
                 "the event after it")
    finally:
        stream.close()
    out = _cli(redis_url, storage_dir, "logs", bad)
    assert out.returncode == 0 and "cancelled before it started" in out.stdout, out.stderr


def test_bad_finished_at_does_not_stop_purge(redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    client, ids = _jobs(redis_url, storage_dir, 3)
    for jid in ids:
        client.store.request_cancel(jid)  # queued -> cancelled: finished
    r.hset(keys.job(ids[0]), "finished_at", "abc")
    r.hset(keys.job(ids[1]), "finished_at", "inf")
    wait_for(lambda: client.store.now_ms() > int(r.hget(keys.job(ids[2]), "updated_at")), 10, "a millisecond")
    out = _cli(redis_url, storage_dir, "purge", "--older-than", "0s")
    assert out.returncode == 0, out.stderr
    assert "removed 3" in out.stdout
    assert not any(r.exists(keys.job(j)) for j in ids) and r.zcard(keys.JOBS_INDEX) == 0
    assert r.hlen(keys.IDX_COUNTS) == 0 and r.zcard(keys.IDX_FINISHED) == 0 and r.hlen(keys.IDX_NAMES) == 0


def test_supervisor_fails_a_corrupt_running_job_once(redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    client, (bad, good) = _jobs(redis_url, storage_dir)
    for jid in (bad, good):
        client.store.transition(jid, JobState.RUNNING, attempt=1, fields={"token": f"t-{jid}", "worker": "w"},
                                lease_ttl_ms=60_000)
        r.zadd(keys.LEASES, {jid: 1})  # the worker died long ago
    r.hset(keys.job(bad), "attempt", "inf")
    sup = Supervisor(SupervisorSettings(redis_url=redis_url, lease_ttl_s=5.0), connection=r)
    sup._redis_uptime_s = lambda: 3600.0  # type: ignore[method-assign]  # the session's server may be young
    rep = sup.step()
    assert rep.failed == [bad] and rep.requeued == [good]
    assert r.zscore(keys.LEASES, bad) is None and r.hget(keys.job(bad), "state") == b"failed"
    assert b"malformed job record" in r.hget(keys.job(bad), "error")
    again = sup.step()
    assert not again.failed and not again.requeued  # handled once: nothing left to retry every step


def test_idempotency_key_of_a_vanished_job_is_freed(redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    first = client.submit(slow_spec(), client_key="k-1").id
    assert client.submit(slow_spec(), client_key="k-1").id == first
    r.delete(keys.job(first))  # purged by a release that left idempotency keys behind
    again = client.submit(slow_spec(), client_key="k-1").id
    assert again != first and r.get(keys.idempotency("k-1")) == again.encode() and r.exists(keys.job(again))
    client.store.request_cancel(again)
    client.store.delete([again])  # today's purge deletes the key with its job
    assert not r.exists(keys.idempotency("k-1"))
