"""The one transition table, enforced atomically in Redis; fencing by attempt and token."""

from __future__ import annotations

import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.contract.queue import pop
from jobs.contract.states import TERMINAL, TRANSITIONS, JobState, can_transition
from jobs.errors import FencedError, IllegalTransitionError, JobNotFoundError
from jobs.redis.store import JobStore

SPEC = {"name": "s", "model": {"builder": "examples.regression:build_model"},
        "data": {"loader": "examples.regression:load_data"}, "fit": {"epochs": 2}}


def test_table_shape() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for t in TERMINAL:
        assert not TRANSITIONS[t], f"{t} is terminal and must have no way out"
    assert can_transition(JobState.RUNNING, JobState.REQUEUED)
    assert not can_transition(JobState.SUCCEEDED, JobState.RUNNING)


def test_transitions_in_redis(redis_url: str, r: redis.Redis, storage_dir) -> None:
    c = Client(redis_url=redis_url, storage=storage_dir)
    job = c.submit(SPEC)
    store = JobStore(r)
    assert store.get(job.id)["state"] == "queued"
    assert r.sismember(keys.state_index("queued"), job.id)
    d = pop(r, [store.raw(job.id)["queue"]], 1)
    assert d is not None and d.message is not None and d.message.job_id == job.id and d.message.attempt == 1

    with pytest.raises(IllegalTransitionError, match="cannot go from queued to succeeded"):
        store.transition(job.id, JobState.SUCCEEDED)
    with pytest.raises(FencedError):  # a message for another attempt cannot claim
        store.transition(job.id, JobState.RUNNING, attempt=2, fields={"token": "t"}, lease_ttl_ms=5000)
    prev = store.transition(job.id, JobState.RUNNING, attempt=1, fields={"token": "tok1", "worker": "w"},
                            lease_ttl_ms=5000)
    assert prev is JobState.QUEUED
    assert r.zscore(keys.LEASES, job.id) is not None and r.zscore(keys.PENDING, job.id) is None
    assert not r.sismember(keys.state_index("queued"), job.id)
    assert r.sismember(keys.state_index("running"), job.id)
    # a second claim of the same attempt (duplicate message) is refused
    with pytest.raises(IllegalTransitionError):
        store.transition(job.id, JobState.RUNNING, attempt=1, fields={"token": "tok2"}, lease_ttl_ms=5000)
    # fenced writes: the wrong token can neither progress nor finish the job
    with pytest.raises(FencedError):
        store.fenced_update(job.id, "nope", fields={"epoch": 1})
    with pytest.raises(FencedError):
        store.transition(job.id, JobState.SUCCEEDED, token="nope")
    assert store.heartbeat(job.id, "tok1", 5000) == (True, False)
    assert store.heartbeat(job.id, "nope", 5000)[0] is False
    store.fenced_update(job.id, "tok1", fields={"epoch": 1}, history_set={1: {"epoch": 1, "loss": 0.5}})
    store.transition(job.id, JobState.SUCCEEDED, token="tok1", event_msg="done")
    st = store.get(job.id)
    assert st["state"] == "succeeded" and st["epoch"] == 1 and st["history"] == [{"epoch": 1, "loss": 0.5}]
    assert "token" not in st  # the fencing token is a capability, never shown
    assert r.zscore(keys.LEASES, job.id) is None
    assert [e["msg"] for e in store.events(job.id)][-1] == "done"
    with pytest.raises(JobNotFoundError):
        store.transition("nosuchjob", JobState.CANCELLED)


def test_idempotent_submit(redis_url: str, r: redis.Redis, storage_dir) -> None:
    c = Client(redis_url=redis_url, storage=storage_dir)
    a = c.submit(SPEC, client_key="nightly-2026-11-28")
    b = c.submit(SPEC, client_key="nightly-2026-11-28")
    assert a.id == b.id
    assert r.zcard(keys.JOBS_INDEX) == 1
    assert r.llen("rq:queue:" + keys.rq_queue_name("default", "cpu", "default")) == 1


def test_cancel_queued_and_list(redis_url: str, r: redis.Redis, storage_dir) -> None:
    c = Client(redis_url=redis_url, storage=storage_dir)
    a, b = c.submit(SPEC), c.submit(SPEC)
    assert a.cancel() is JobState.QUEUED
    assert a.state is JobState.CANCELLED
    assert [j["id"] for j in c.list(state="cancelled")] == [a.id]
    assert [j["id"] for j in c.list(state="queued")] == [b.id]
    assert {j["id"] for j in c.list()} == {a.id, b.id}


def test_submit_many_records_and_enqueues_each_job(redis_url: str, r: redis.Redis, storage_dir) -> None:
    c = Client(redis_url=redis_url, storage=storage_dir)
    handles = c.submit_many([SPEC, {**SPEC, "name": "t"}])
    assert [h.status()["id"] for h in handles] == [h.id for h in handles]
    assert {h.status()["state"] for h in handles} == {"queued"}
    assert r.llen("rq:queue:" + keys.rq_queue_name("default", "cpu", "default")) == 2


def test_owner_is_recorded_from_argument_client_and_os_user(redis_url: str, r: redis.Redis, storage_dir,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.contract.owners import default_owner
    from jobs.errors import SpecError

    monkeypatch.delenv("TRAIND_OWNER", raising=False)
    plain = Client(redis_url=redis_url, storage=storage_dir)
    assert plain.submit(SPEC).status()["owner"] == default_owner()
    assert plain.submit(SPEC, owner="bob").status()["owner"] == "bob"
    alice = Client(redis_url=redis_url, storage=storage_dir, owner="alice")
    assert {h.status()["owner"] for h in alice.submit_many([SPEC, SPEC])} == {"alice"}
    monkeypatch.setenv("TRAIND_OWNER", "carol")
    assert Client(redis_url=redis_url, storage=storage_dir).submit(SPEC).status()["owner"] == "carol"
    before = r.dbsize()
    with pytest.raises(SpecError, match="owner: expected 1-64 characters"):
        plain.submit(SPEC, owner="no spaces")
    assert r.dbsize() == before  # refused before anything was written
