"""Compaction of finished jobs (issue 25, jobs/redis/packed.py): a compacted job reads exactly as before through every
public reader (JobStore, the API, `traind logs`/`status`), a retry unpacks it and keeps its history, a corrupt or
oversized packed value is one bad row, purge deletes it, the supervisor compacts each finished job once."""

from __future__ import annotations

import json
import secrets
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis

from bench import _util as u
from bench._scale_preload import Templates, preload
from bench.scale import SPEC
from daemon.cli import main
from daemon.supervisor import Supervisor
from jobs.client import Client
from jobs.contract import keys
from jobs.contract.events import EventKind, event
from jobs.contract.states import JobState
from jobs.ops import admin
from jobs.redis import packed
from jobs.redis.badput import job_goodput
from jobs.redis.store import JobStore
from jobs.settings import SupervisorSettings
from tests.conftest import Procs, log_of, wait_for
from tests.serve.conftest import Served, slow_spec
from worker.ledger import EpochRecord, RedisLedger


def _finished(redis_url: str, tmp_path: Path, n: int, start: int = 0) -> tuple[JobStore, list[str]]:
    """``n`` finished jobs of 50-99 epochs (bench.scale's preload: the store's scripts); job 15, 31, ... fails."""
    client = Client(settings=u.client_settings(redis_url, tmp_path / "s"))
    store = JobStore(redis.Redis.from_url(redis_url))
    before = set(store.list_ids())
    preload(store, client._fields(client._validate(SPEC), "x", client.owner), n, start=start, templates=Templates())
    return store, sorted(set(store.list_ids()) - before)


def _cli(redis_url: str, storage: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main([*args, "--redis-url", redis_url, "--storage", str(storage)]) == 0
    return capsys.readouterr().out


def _views(store: JobStore, served: Served, jid: str, redis_url: str, storage: Path,
           capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with served.client() as c:
        api = {p: c.get(f"/api/v1/jobs/{jid}{p}").json() for p in ("", "/history", "/events", "/events?start=-5")}
        with c.stream("GET", f"/api/v1/jobs/{jid}/stream") as resp:  # the SSE snapshot: its first data line
            api["stream"] = json.loads(next(ln for ln in resp.iter_lines() if ln.startswith("data:"))[5:])
        assert api["stream"]["events"] and api["stream"]["state"] in ("succeeded", "failed"), api["stream"]
    return {"get": store.get(jid), "history": store.history(jid), "events": store.events(jid),
            "events_tail": store.events(jid, -7), "events_from": store.events(jid, 40),
            "goodput": job_goodput(store, jid).to_dict(), "api": api,
            "logs": _cli(redis_url, storage, capsys, "logs", jid),
            "status": json.loads(_cli(redis_url, storage, capsys, "status", jid, "--json"))}


def _memory(r: redis.Redis, jid: str) -> int:
    ks = [keys.job(jid), keys.history(jid), keys.events(jid), keys.checkpoints(jid), keys.packed(jid)]
    return sum(r.memory_usage(k, samples=0) or 0 for k in ks)  # every field (a sample misjudges the record)


def test_compacted_job_reads_identically_everywhere(served: Served, redis_url: str, storage_dir: Path,
                                                    capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store, ids = _finished(redis_url, tmp_path, 2, start=14)  # 14 succeeds, 15 fails
    r = store.r
    before = {jid: _views(store, served, jid, redis_url, storage_dir, capsys) for jid in ids}
    mem_before = {jid: _memory(r, jid) for jid in ids}
    assert packed.compact_step(r, store.now_ms(), 0, store.events_max) == 2
    for jid in ids:
        assert not r.exists(keys.history(jid)) and not r.exists(keys.events(jid)) and r.exists(keys.packed(jid))
        assert _views(store, served, jid, redis_url, storage_dir, capsys) == before[jid]
        assert len(before[jid]["history"]) >= 50 and before[jid]["events"]
        assert _memory(r, jid) < min(20_000, mem_before[jid] / 2), (mem_before[jid], _memory(r, jid))
    assert packed.compact_step(r, store.now_ms(), 0, store.events_max) == 0  # each finished job once


def test_retry_of_a_compacted_failed_job_unpacks_and_keeps_its_history(redis_url: str, tmp_path: Path) -> None:
    store, ids = _finished(redis_url, tmp_path, 2, start=14)
    r = store.r
    failed, ok = sorted(ids, key=lambda j: store.record(j).state)  # "failed" < "succeeded"
    hist, evs = store.history(failed), store.events(failed)
    assert store.record(failed).state == "failed"
    assert packed.compact_step(r, store.now_ms(), 0, store.events_max) == 2
    attempt = admin.retry(store, failed)
    assert not r.exists(keys.packed(failed)) and store.history(failed) == hist  # unpacked before it runs again
    assert store.events(failed)[:len(evs)] == evs and store.events(failed)[-1]["kind"] == "retried"
    # Should a pass have compacted it again between the unpack and the requeue, the attempt's begin unpacks it.
    value = packed.encode(r.hgetall(keys.history(failed)), r.lrange(keys.events(failed), 0, -1))
    r.set(keys.packed(failed), value)
    r.delete(keys.history(failed), keys.events(failed))
    # The next attempt resumes from epoch n-2: it drops the later epochs (HDEL) and redoes them, then succeeds.
    n = len(hist)
    led = RedisLedger(store, failed, attempt, secrets.token_hex(16))
    led.claim("w2", 5000)
    led.begin({"epoch": n - 2}, history_del=[n - 1, n], ckpt_del=[], events=[event(EventKind.NOTE, "resumed")])
    assert [h["epoch"] for h in store.history(failed)] == list(range(1, n - 1))
    for e in (n - 1, n):
        led.epoch_end(EpochRecord(e, {"loss": 0.1}, {"epoch": e, "loss": 0.1, "time_s": 1.0}))
    led.end(JobState.SUCCEEDED, "succeeded after retry")
    after_hist, after_ev = store.history(failed), store.events(failed)
    assert after_hist == hist[:-2] + [{"epoch": e, "loss": 0.1, "time_s": 1.0} for e in (n - 1, n)]
    assert packed.compact_step(r, store.now_ms(), 0, store.events_max) == 1  # finished again: compacted again
    assert not r.exists(keys.history(failed)) and store.history(failed) == after_hist
    assert store.events(failed) == after_ev and store.record(failed).state == "succeeded"
    assert store.history(ok) and not r.exists(keys.history(ok))


def test_corrupt_or_oversized_packed_value_is_one_bad_row(served: Served, redis_url: str, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "MAX_UNPACKED_BYTES", 1 << 20)  # the same check at 1 MiB: fast (the app reads it too)
    store, ids = _finished(redis_url, tmp_path, 4)
    r = store.r
    packed.compact_step(r, store.now_ms(), 0, store.events_max)
    bomb = packed.MAGIC + zlib.compress(b" " * (packed.MAX_UNPACKED_BYTES + 1024), 9)  # inflates past the bound
    bad = {ids[0]: b"not packed at all", ids[1]: packed.MAGIC + b"\x78\x9cgarbage", ids[2]: bomb}
    for jid, v in bad.items():
        r.set(keys.packed(jid), v)
    good_history = store.history(ids[3])
    problems = {ids[0]: "unknown format", ids[1]: "corrupt", ids[2]: "inflates past"}
    with served.client() as c:
        for jid, words in problems.items():
            assert store.history(jid) == [] and store.events(jid) == []
            st = store.get(jid)
            assert st["state"] == "succeeded" and st["history"] == []
            assert any(words in p for p in st["problems"]), st["problems"]
            resp = c.get(f"/api/v1/jobs/{jid}")
            assert resp.status_code == 200 and any(words in p for p in resp.json()["problems"])
            assert c.get(f"/api/v1/jobs/{jid}/events").json() == []
        assert c.get("/api/v1/jobs?limit=10").status_code == 200
        assert c.get(f"/api/v1/jobs/{ids[3]}/history").json() == good_history
    assert packed.unpack(r, ids[1], store.events_max) is False and r.get(keys.packed(ids[1])) == bad[ids[1]]  # kept
    assert any("inflates past" in rec.getMessage() for rec in caplog.records)


def test_purge_deletes_the_packed_value(redis_url: str, tmp_path: Path) -> None:
    store, ids = _finished(redis_url, tmp_path, 3)
    packed.compact_step(store.r, store.now_ms(), 0, store.events_max)
    assert all(store.r.exists(keys.packed(j)) for j in ids)
    assert sorted(admin.purge(store, None, 0)) == ids
    assert not any(store.r.exists(keys.packed(j), keys.job(j)) for j in ids)


def test_supervisor_compacts_each_finished_job_once_through_its_cursor(redis_url: str, tmp_path: Path) -> None:
    store, ids = _finished(redis_url, tmp_path, 8)  # pipelined: several finish in the same millisecond
    r = store.r
    assert packed.compact_step(r, store.now_ms(), 0, store.events_max, 50, budget_s=0) == 1  # the time budget
    sup = Supervisor(SupervisorSettings(redis_url=redis_url, storage_dir=tmp_path / "s", compact_after_s=3600,
                                        compact_batch=3, compact_budget_ms=10_000), connection=r)
    assert sup.step().compacted == 0  # not an hour old yet
    sup.settings.compact_after_s = 0
    counts = [sup.step().compacted for _ in range(4)]  # the other 7
    assert counts == [3, 3, 1, 0], counts
    assert all(r.exists(keys.packed(j)) and not r.exists(keys.history(j)) for j in ids)
    store.add_event(ids[0], EventKind.NOTE, "a note after compaction")  # still readable, after the packed ones
    assert store.events(ids[0])[-1]["msg"] == "a note after compaction"


def test_a_running_supervisor_compacts_finished_jobs(redis_url: str, tmp_path: Path, procs: Procs) -> None:
    store, ids = _finished(redis_url, tmp_path, 5)
    history = {j: store.history(j) for j in ids}
    sup = procs.supervisor(redis_url, tmp_path / "s", env={"TRAIND_COMPACT_AFTER_S": "0", "TRAIND_COMPACT_BATCH": "2"})
    wait_for(lambda: all(store.r.exists(keys.packed(j)) for j in ids) or sup.poll() is not None, 60,
             "the supervisor to compact every finished job")
    assert sup.poll() is None, log_of(sup)
    assert not any(store.r.exists(keys.history(j), keys.events(j)) for j in ids)
    assert {j: store.history(j) for j in ids} == history


def test_real_worker_resumes_a_compacted_cancelled_job(redis_url: str, storage_dir: Path, procs: Procs,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(slow_spec(name="compact-retry", epochs=6, batch_delay_s=0.08))
    w = procs.worker(redis_url, storage_dir, "--worker-id", "compact-w")
    store = client.store
    try:
        wait_for(lambda: len(store.history(job.id)) >= 2, 120, "two epochs")
        store.request_cancel(job.id)
        wait_for(lambda: store.record(job.id).state == "cancelled", 60, "the cancel")
        before, n = store.history(job.id), len(store.history(job.id))
        assert 2 <= n < 6
        assert packed.compact_step(store.r, store.now_ms(), 0, store.events_max) == 1
        assert not store.r.exists(keys.history(job.id)) and store.history(job.id) == before
        assert "attempt 2" in _cli(redis_url, storage_dir, capsys, "retry", job.id)
        st = job.wait(120)
    except AssertionError:
        raise AssertionError(log_of(w)) from None
    assert st["state"] == "succeeded" and st["attempt"] == 2
    hist = store.history(job.id)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5, 6]
    resumed = store.record(job.id).resume_epoch or 0
    assert 1 <= resumed <= n and hist[:resumed] == before[:resumed]  # the epochs it did not redo are kept as they were
