"""Alerts through real Redis, the real supervisor step and real Apprise to a local HTTP endpoint, with the sender's
clock injected: the lost-worker, hung and preempted alerts, retries with backoff, one message for two senders,
a bad URL refused at submit, and the URL's secret masked in the status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.alerts.sender import AlertSender
from jobs.client import Client
from jobs.contract import keys
from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from jobs.errors import SpecError
from jobs.redis.delivery import requeue
from jobs.redis.hung import hand_back_hung
from jobs.redis.lemons import LemonPolicy
from jobs.redis.store import JobStore
from jobs.settings import SupervisorSettings
from tests.alerts.hooks import Hooks
from tests.conftest import wait_for

SECRET = "s3cretpass"


def spec(name: str, notify: list[str]) -> dict[str, Any]:
    return {"name": name, "model": {"builder": "tests.models:slow_regression"},
            "data": {"loader": "tests.models:load_data"}, "fit": {"epochs": 3}, "notify": notify}


@pytest.fixture()
def hooks() -> Iterator[Hooks]:
    with Hooks() as h:
        yield h


def settings(redis_url: str, **kw: Any) -> SupervisorSettings:
    base = dict(redis_url=redis_url, lease_ttl_s=0.5, heartbeat_interval_s=0.1, notify_backoff_s=0.2,
                notify_attempts=4, notify_timeout_s=5.0)
    return SupervisorSettings(**{**base, **kw})


def claim(client: Client, job_id: str, attempt: int) -> None:
    """What a worker's claim writes: running, a lease of 1 ms (so it has expired by the supervisor's next step)."""
    client.store.transition(job_id, JobState.RUNNING, attempt=attempt, lease_ttl_ms=1,
                            fields={"worker": "w-test", "token": f"tok{attempt}"}, event_msg="claimed")


def drain(sender: AlertSender, now: int, passes: int = 3) -> list[str]:
    """Steps at ``now`` until nothing is in flight; the names of the deliveries sent."""
    sent: list[str] = []
    for _ in range(passes):
        rep = sender.step(now_ms=now)
        sent += rep.sent
        assert sender.wait_idle(10)
    return sent + sender.step(now_ms=now).sent


def test_bad_notify_urls_are_refused_at_submit_naming_each(redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    bad = ["json://127.0.0.1:9/fine", f"nosuch://{SECRET}", "slack://T1", "has space", "x" * 3000]
    with pytest.raises(SpecError) as e:
        client.submit(spec("bad-urls", bad))
    problems = e.value.problems
    assert [p.split(":", 1)[0] for p in problems] == ["notify.3", "notify.4", "notify.1", "notify.2"], problems
    assert "not a usable Apprise URL" in problems[2] and "Slack" in problems[3]
    assert SECRET not in str(problems)
    assert r.zcard(keys.JOBS_INDEX) == 0  # nothing was submitted
    with pytest.raises(SpecError, match="notify: List should have at most 10 items"):
        client.submit(spec("too-many", ["json://127.0.0.1:9/x"] * 11))


def test_lost_worker_hung_and_preempted_alerts_retry_with_backoff(redis_url: str, storage_dir: Path,
                                                                 hooks: Hooks, r: redis.Redis) -> None:
    from daemon.supervisor import Supervisor

    # A Redis younger than one lease TTL gets no requeues (the supervisor's restart grace): wait it out.
    wait_for(lambda: int(r.info("server")["uptime_in_seconds"]) >= 1, 10, "redis up for a lease TTL")

    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(spec("lossy", [hooks.url("h", f"user:{SECRET}@")]))
    sup = Supervisor(settings(redis_url, public_url="https://traind.example.org"))
    sender = sup.alerts
    now = client.store.now_ms()

    # Lost worker: the real supervisor step requeues the expired lease (its own code path writes the event).
    claim(client, job.id, 1)
    rep = sup.step(now_ms=now + 10_000)
    assert rep.requeued == [job.id], rep
    hooks.fail("h", 2)
    assert len(sender.step(now_ms=now).started) == 1
    assert sender.wait_idle(10)
    assert sender.step(now_ms=now).retrying and hooks.at("h", ok_only=False)  # try 1 failed: next at now + 0.2 s
    assert sender.step(now_ms=now + 199).started == []  # not before its backoff
    assert len(sender.step(now_ms=now + 200).started) == 1
    assert sender.wait_idle(10)
    assert sender.step(now_ms=now + 200).retrying  # try 2 failed: the wait doubles to 0.4 s
    assert sender.step(now_ms=now + 599).started == []
    assert len(sender.step(now_ms=now + 600).started) == 1
    assert sender.wait_idle(10)
    assert len(sender.step(now_ms=now + 600).sent) == 1
    assert [r["status"] for r in hooks.at("h", ok_only=False)] == [500, 500, 200]
    sent = [e for e in client.store.events(job.id) if e["kind"] == EventKind.ALERT_SENT.value]
    assert [(e["alert"], e["tries"]) for e in sent] == [("lost_worker", 3)]
    assert sent[0]["target"] == f"json://user:****@127.0.0.1:{hooks.port}/h"

    # Hung (as the watchdog hands it back) and preempted (as a worker's graceful stop requeues it).
    claim(client, job.id, 2)
    hand_back_hung(client.store, job.id, attempt=2, token="tok2", epoch=1, batch=4, silent_s=61, by="watchdog",
                   machine=None, policy=LemonPolicy())
    claim(client, job.id, 3)
    requeue(client.store, job.id, attempt=3, token="tok3", queue="traind.default.cpu.default",
            kind=EventKind.PREEMPTED, msg="preempted (SIGTERM): requeued")
    drain(sender, now + 1000)
    bodies = {r["body"]["title"]: r["body"]["message"] for r in hooks.at("h")}  # the last two were sent at once
    assert sorted(bodies) == ["traind: job lossy hung", "traind: job lossy lost its worker",
                              "traind: job lossy was preempted"] and len(hooks.at("h")) == 3
    lost = bodies["traind: job lossy lost its worker"]
    assert f"job: lossy ({job.id})" in lost and "reason: worker w-test lost" in lost
    assert "reason: attempt 2 hung at epoch 1 batch 4" in bodies["traind: job lossy hung"]
    assert f"dashboard: https://traind.example.org/#/job/{job.id}" in bodies["traind: job lossy was preempted"]
    assert client.r.xlen(keys.ALERTS_OUTBOX) == 0  # every entry done and removed

    # The secret is nowhere a reader looks: status (its spec), events, the API's spec.
    st = client.store.get(job.id)
    assert st["spec"]["notify"] == [f"json://user:****@127.0.0.1:{hooks.port}/h"]
    shown = json.dumps([st, client.store.events(job.id), job.spec()])
    assert SECRET not in shown and "notify_urls" not in st


def test_two_senders_send_each_alert_once(redis_url: str, storage_dir: Path, hooks: Hooks) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    jobs = [client.submit(spec(f"twice-{i}", [hooks.url("one")])) for i in range(3)]
    for j in jobs:
        client.store.transition(j.id, JobState.FAILED, fields={"error": "boom"}, event_msg="failed: boom")
    a = AlertSender(client.store, settings(redis_url, notify=hooks.url("all")), me="a")
    b = AlertSender(client.store, settings(redis_url, notify=hooks.url("all")), me="b")
    now = client.store.now_ms()
    for _ in range(4):  # interleaved passes, sends overlapping
        a.step(now_ms=now)
        b.step(now_ms=now)
    assert a.wait_idle(10) and b.wait_idle(10)
    for _ in range(3):
        a.step(now_ms=now)
        b.step(now_ms=now)
    assert sorted(r["body"]["title"] for r in hooks.at("one")) == [f"traind: job twice-{i} failed" for i in range(3)]
    assert len(hooks.at("all")) == 3 and len(hooks.requests) == 6
    assert client.r.xlen(keys.ALERTS_OUTBOX) == 0


def test_a_claim_race_between_two_senders_sends_once(redis_url: str, storage_dir: Path, hooks: Hooks) -> None:
    """Sender b reads no claim and claims first while sender a is between its read and its claim: a must not send."""
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(spec("race", [hooks.url("race")]))
    client.store.transition(job.id, JobState.FAILED, fields={"error": "boom"}, event_msg="failed: boom")
    b = AlertSender(client.store, settings(redis_url), me="b")
    store_a = JobStore(redis.Redis.from_url(redis_url))
    a = AlertSender(store_a, settings(redis_url), me="a")
    real_set = store_a.r.set

    def set_after_b(*args: Any, **kw: Any) -> Any:
        assert b.step().started  # b claims in the gap between a's read of the claims and a's own claim
        return real_set(*args, **kw)

    store_a.r.set = set_after_b  # type: ignore[method-assign]
    assert a.step().started == []
    store_a.r.set = real_set  # type: ignore[method-assign]
    assert b.wait_idle(10) and a.wait_idle(10)
    b.step()
    a.step()
    assert len(hooks.at("race")) == 1


def test_muted_events_and_jobs_without_urls_leave_nothing(redis_url: str, storage_dir: Path, hooks: Hooks) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    quiet = client.submit(spec("quiet", []))
    muted = client.submit(spec("muted", [hooks.url("m")]))
    for j in (quiet, muted):
        client.store.transition(j.id, JobState.CANCELLED, event_msg="cancelled")  # cancelled never alerts
    client.store.transition(muted.id, JobState.REQUEUED, retry=True, event_msg="retried", kind=EventKind.RETRIED)
    client.store.transition(muted.id, JobState.FAILED, event_msg="failed: x", only_from=[JobState.REQUEUED])
    assert client.r.xlen(keys.ALERTS_OUTBOX) == 1  # only the failure
    sender = AlertSender(client.store, settings(redis_url, notify_events="succeeded,hung"))
    sender.step()
    assert client.r.xlen(keys.ALERTS_OUTBOX) == 0 and hooks.requests == []


def test_malformed_outbox_entries_are_one_bad_row_each(redis_url: str, r: redis.Redis, hooks: Hooks) -> None:
    r.set(keys.job("1a2b3c4d5e6f7a8b9c0d1"), "not a hash")  # WRONGTYPE for the sender's reads
    r.xadd(keys.ALERTS_OUTBOX, {"job": "../../etc", "alert": "failed", "event": "{}"})
    r.xadd(keys.ALERTS_OUTBOX, {"job": "1a2b3c4d5e6f7a8b9c0d2", "alert": "exploded", "event": "{}"})
    r.xadd(keys.ALERTS_OUTBOX, {"job": "1a2b3c4d5e6f7a8b9c0d3", "alert": "failed", "event": "[" * 100_000})
    r.xadd(keys.ALERTS_OUTBOX, {"job": "1a2b3c4d5e6f7a8b9c0d1", "alert": "failed", "event": "{}"})
    r.xadd(keys.ALERTS_OUTBOX, {"alert": b"\xff\xfe"})
    sender = AlertSender(JobStore(r), settings(redis_url, notify=hooks.url("all")))
    rep = sender.step()
    assert rep.dropped == 4 and len(rep.started) == 1  # an event too long to read still alerts, without its text
    assert sender.wait_idle(10)
    rep = sender.step()
    assert rep.sent and rep.dropped == 1  # sent, then removed in the same pass
    assert r.xlen(keys.ALERTS_OUTBOX) == 0 and len(hooks.at("all")) == 1


def test_entries_waiting_out_a_backoff_do_not_hide_newer_ones(redis_url: str, storage_dir: Path, hooks: Hooks,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobs.alerts.sender.SCAN", 2)
    client = Client(redis_url=redis_url, storage=storage_dir)
    jobs = [client.submit(spec(f"rr-{i}", [hooks.url(f"rr{i}")])) for i in range(3)]
    for j in jobs:
        client.store.transition(j.id, JobState.FAILED, event_msg="failed: x")
    now = client.store.now_ms()
    waiting = [eid.decode() for eid, _ in client.r.xrange(keys.ALERTS_OUTBOX, count=2)]
    client.r.hset(keys.ALERTS_TRIES, mapping={f"{eid}|s0": f"1:{now + 3_600_000}" for eid in waiting})
    sender = AlertSender(client.store, settings(redis_url))
    assert sender.step(now_ms=now).started == []  # the first two wait an hour
    assert len(sender.step(now_ms=now).started) == 1  # the next pass reads on past them
    assert sender.wait_idle(10)
    sender.step(now_ms=now)
    assert [len(hooks.at(f"rr{i}")) for i in range(3)] == [0, 0, 1]


def test_a_hanging_webhook_never_holds_up_a_pass(redis_url: str, storage_dir: Path) -> None:
    import threading
    import time

    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(spec("slow-hook", ["json://127.0.0.1:9/never"]))
    client.store.transition(job.id, JobState.FAILED, event_msg="failed: x")
    release, calls = threading.Event(), []

    def hanging_send(url: str, title: str, body: str, timeout_s: float) -> tuple[bool, str]:
        calls.append(url)
        release.wait(30)
        return True, ""

    sender = AlertSender(client.store, settings(redis_url), send=hanging_send)
    t0 = time.monotonic()
    for _ in range(5):
        sender.step()
    assert time.monotonic() - t0 < 2.0 and calls == ["json://127.0.0.1:9/never"]  # in flight, claimed once
    release.set()
    assert sender.wait_idle(10) and sender.step().sent
