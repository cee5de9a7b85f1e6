"""The supervisor's lease clock across a change of Redis server (a failover, or a restart): a new primary's clock
may be ahead of or behind the one that wrote the leases. Every running job then gets exactly one lease TTL on the new
clock: none is requeued at once, none lives longer than one TTL. Real redis-server (AOF, restarted: a new run_id)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.contract.states import JobState
from jobs.settings import SupervisorSettings
from testkit.cluster import RedisServer
from tests.conftest import wait_for
from tests.test_supervisor import FakeUptime, claim, spec

TTL_S = 1.0


@pytest.fixture()
def aof(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis", aof=True).start()
    yield srv
    srv.stop(kill=True)


def test_new_primary_clock_gives_each_lease_one_ttl(aof: RedisServer, storage_dir: Path) -> None:
    r = redis.Redis.from_url(aof.url)
    client = Client(redis_url=aof.url, storage=storage_dir)
    ahead, behind = client.submit(spec()), client.submit(spec())
    for i, job in enumerate((ahead, behind)):
        claim(r, client.store, job.id, 1, f"t{i}", worker=f"w{i}")
    # Uptime faked to an hour: only noticing the change of server may protect the leases.
    sup = FakeUptime(SupervisorSettings(redis_url=aof.url, lease_ttl_s=TTL_S), connection=redis.Redis.from_url(aof.url))
    assert sup.step().skipped_reason is None  # first look at this server: nothing to compare with
    now = client.store.now_ms()
    # As the new primary's clock sees them: one lease long expired (its clock is an hour ahead of the old one),
    # one an hour away (its clock is behind).
    r.zadd(keys.LEASES, {ahead.id: now - 3_600_000, behind.id: now + 3_600_000})
    r.execute_command("BGREWRITEAOF")
    aof.restart(kill=False)  # a different server answers now: new run_id, same data
    r = redis.Redis.from_url(aof.url)

    rep = sup.step()
    assert rep.skipped_reason and "primary changed" in rep.skipped_reason and not rep.requeued
    leases = {m.decode(): int(s) for m, s in r.zrange(keys.LEASES, 0, -1, withscores=True)}
    for job_id in (ahead.id, behind.id):
        assert rep.now_ms <= leases[job_id] <= client.store.now_ms() + TTL_S * 1000  # one TTL on the new clock
        assert client.store.get(job_id, with_history=False)["state"] == JobState.RUNNING.value

    # A worker that renews keeps its job; the other is requeued once its one TTL is over, not an hour later.
    requeued: list[str] = []

    def renew_and_step() -> bool:
        assert client.store.heartbeat(ahead.id, "t0", int(TTL_S * 1000))[0]
        requeued.extend(sup.step().requeued)
        return bool(requeued)

    wait_for(renew_and_step, 60, "the job whose worker does not renew to be requeued", interval=0.1)
    assert requeued == [behind.id]
    st = client.store.get(behind.id, with_history=False)
    assert int(st["requeued_at"]) >= leases[behind.id]  # not before its TTL on the new clock was over
    assert client.store.get(ahead.id, with_history=False)["state"] == JobState.RUNNING.value
