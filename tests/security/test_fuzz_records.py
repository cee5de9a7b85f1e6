"""Issue 21.5: fuzzing every reader of traind's Redis records (hypothesis, derandomized as in test_fuzz.py).

Generated job hashes, worker hashes, history entries and event-log entries (junk bytes, non-UTF-8, inf/NaN/huge
numbers, broken JSON) are parsed by the typed records and read through every reader on a real redis-server: the
store, the list pages and their filters, workers, health and the waiting note, the CLI's formatting, /metrics'
collector, the SSE hub's read of a changed job and a supervisor step. None may raise; typed numbers are numbers
(finite floats), event times integers, and what the API hands out serializes as it writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
from hypothesis import given
from hypothesis import strategies as st

from daemon import render
from daemon.serve.metrics import TraindCollector
from daemon.serve.sse import ALL, Hub, _Pending
from daemon.supervisor import Supervisor
from jobs.contract import keys
from jobs.contract.records import JobRecord, WorkerRecord, parse_event, to_int
from jobs.ops import admin
from jobs.ops.lookup import summary
from jobs.ops.waiting import no_worker_note
from jobs.redis.store import JobStore, parse_history
from jobs.settings import SupervisorSettings
from tests.security.test_fuzz import PURE, REDIS

JOB_FIELDS = ["id", "name", "state", "queue", "epoch", "epochs", "restarts", "attempt", "max_restarts", "best_epoch",
              "best_value", "created_at", "updated_at", "finished_at", "batch", "steps", "stopped_early",
              "cancel_requested", "worker", "spec", "metrics", "error", "resume_from", "other"]
WORKER_FIELDS = ["host", "pid", "device", "devices", "job", "jobs_done", "seen", "rss_mb", "cpu_percent",
                 "gpu_mem_mb", "queues"]
NASTY = [b"inf", b"-inf", b"nan", b"NaN", b"1e400", b"-1e400", b"abc", b"\xff\xfe", b"", b"1.5", b"{", b"[]",
         b"null", str(2**70).encode(), b"-1", b"0", b"running", b"succeeded", b"traind.default.cpu.high",
         b'{"checkpoint": {"monitor": 3}}', b'{"loss": NaN}', b'"\\ud800"', b"9" * 5000]
values = st.one_of(st.sampled_from(NASTY), st.binary(max_size=12), st.integers().map(lambda i: str(i).encode()),
                   st.floats().map(lambda f: repr(f).encode()), st.text(max_size=12).map(str.encode))
job_hashes = st.dictionaries(st.sampled_from(JOB_FIELDS), values, max_size=10)
worker_hashes = st.dictionaries(st.sampled_from(WORKER_FIELDS), values, max_size=8)
event_entries = st.one_of(values, st.fixed_dictionaries({}, optional={
    "ts": st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none(), st.booleans()),
    "msg": st.one_of(st.text(max_size=10), st.integers(), st.lists(st.integers(), max_size=2)),
    "level": st.one_of(st.sampled_from(["info", "error"]), st.integers()),
    "kind": st.one_of(st.sampled_from(["epoch", "note"]), st.none())}).map(lambda d: json.dumps(d).encode()))


def _strict_json(obj: Any) -> None:
    json.dumps(obj, default=str)  # as daemon.serve.api._json writes it


@PURE
@given(job_hashes, worker_hashes, st.lists(event_entries, max_size=4))
def test_fuzz_record_parsers(job: dict[str, bytes], worker: dict[str, bytes], events: list[bytes]) -> None:
    rec = JobRecord.parse(job, "j1")
    out = rec.to_dict()
    _strict_json(out)
    for f in ("epoch", "restarts", "preemptions", "epochs", "attempt", "finished_at"):
        assert out.get(f) is None or isinstance(out[f], int), (f, out[f])
    assert out.get("best_value") is None or isinstance(out["best_value"], float)
    assert isinstance(rec.monitor, str)
    render.status_block({**summary(out), "history": []})
    render.summary_row(out, now_ms=to_int(job.get("updated_at")))
    render.final_summary(out)
    render.progress_line(out)
    w = WorkerRecord.parse("w1", worker).to_dict(now_ms=0)
    _strict_json(w)
    assert w.get("pid") is None or isinstance(w["pid"], int)
    for raw in events:
        ev = parse_event(raw)
        assert isinstance(ev["ts"], int) and not isinstance(ev["ts"], bool)
        render.event_line(ev)
    parse_history({b"1": events[0] if events else b"{}", b"x": b"{}"}, "fuzz")


def test_fuzz_readers_over_redis(r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    store = JobStore(r)
    sup = Supervisor(SupervisorSettings(redis_url=redis_url, lease_ttl_s=5.0), connection=r)
    sup._redis_uptime_s = lambda: 3600.0  # type: ignore[method-assign]
    collector = TraindCollector(store, lease_ttl_s=5.0)
    hub = Hub(store, aconn=None)  # type: ignore[arg-type]  # _read uses the store only

    @REDIS
    @given(job=job_hashes, worker=worker_hashes, events=st.lists(event_entries, max_size=3),
           history=st.dictionaries(values, values, max_size=3), leased=st.booleans(), pending=st.booleans())
    def one(job: dict[str, bytes], worker: dict[str, bytes], events: list[bytes], history: dict[bytes, bytes],
            leased: bool, pending: bool) -> None:
        r.flushdb()
        good, _ = store.create("good1", {"id": "good1", "name": "good", "queue": "traind.default.cpu.default",
                                         "attempt": 1, "max_restarts": 3, "epochs": 2})
        bad, _ = store.create("bad1", {"id": "bad1", "name": "bad", "queue": "traind.default.cpu.default"})
        if job:
            r.hset(keys.job(bad), mapping=job)
        if worker:
            r.hset(keys.worker("w1"), mapping=worker)
            r.zadd(keys.WORKERS, {"w1": store.now_ms()})
        if events:
            r.rpush(keys.events(bad), *events)
        if history:
            r.hset(keys.history(bad), mapping=history)
        if leased:
            r.zadd(keys.LEASES, {bad: 1})
        if pending:
            r.zadd(keys.PENDING, {bad: 1})
        st_ = store.get(bad)
        _strict_json(summary(st_))
        render.status_block(st_)
        assert [e["ts"] for e in store.events(bad)] == [to_int(e["ts"]) for e in store.events(bad)]
        for params in ({}, {"name": "a"}, {"state": "queued"}, {"queue": "default"},
                       {"state": "queued", "queue": "default"}, {"queue": "traind.default.cpu.default"}):
            page = admin.list_page(store, **params)
            assert good in {j["id"] for j in page["items"]} or params.get("name"), params
            _strict_json(page)
        for row in store.list():
            render.summary_row(row, store.now_ms())
        _strict_json(admin.workers(store))
        admin.health(r, worker="w1")
        for jid in (good, bad):
            no_worker_note(r, store.get(jid), store.now_ms() + 60_000)
        list(collector.collect())
        hub.viewers = {bad: set(), ALL: set()}
        for _, payload in hub._read(bad, _Pending(kinds={"epoch"}, epochs={1, 2}), detail=True):
            json.loads(payload.split(b"data: ", 1)[1])  # each SSE event's data is JSON the browser parses
        sup.step()  # every per-entry failure is handled inside; nothing may escape
        assert store.record(good).state in ("queued", "running")

    one()
