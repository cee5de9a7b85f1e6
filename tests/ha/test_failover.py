"""Losing the Redis primary while two jobs train: Sentinel promotes the replica, every process follows it by
itself, and nothing that was acknowledged is lost (real primary, replica, three sentinels, supervisor, two workers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.client import Client, JobHandle
from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from jobs.settings import ClientSettings
from tests.conftest import ROOT, Procs, wait_for
from tests.fault.helpers import RUN_S, Cluster, assert_history_complete, events_of, job_spec, wait_terminal
from tests.ha.cluster import SentinelCluster

pytestmark = pytest.mark.fault
EPOCHS = 10
# A frozen primary holds a request until the socket timeout; keep it short so processes move on within seconds.
HA_ENV = {"TRAIND_LEASE_TTL_S": "5", "TRAIND_REDIS_SOCKET_TIMEOUT_S": "3", "TRAIND_REDIS_WAIT_TIMEOUT_S": "1"}


@pytest.fixture()
def ha(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path / "ha").start()
    yield cluster
    cluster.stop()


def _cluster(procs: Procs, ha: SentinelCluster, storage: Path) -> Cluster:
    c = Cluster(procs, ha.url, storage, env=HA_ENV)
    c.client = Client(settings=ClientSettings(redis_url=ha.url, storage_dir=storage, redis_socket_timeout_s=3.0,
                                              redis_wait_timeout_s=1.0))
    c.store = c.client.store
    return c


class Submitter(threading.Thread):
    """Submits a one-epoch job every ``interval_s`` while a failover happens; records each id or error."""

    def __init__(self, client: Client, limit: int = 3, interval_s: float = 0.4) -> None:
        super().__init__(daemon=True)
        self.client, self.limit, self.interval_s = client, limit, interval_s
        self.ok: list[JobHandle] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()

    def run(self) -> None:
        for i in range(self.limit):
            if self.done.wait(self.interval_s):
                return
            try:
                self.ok.append(self.client.submit(job_spec(f"during-failover-{i}", 1)))
            except (redis.RedisError, OSError) as e:  # must be a clear error, never a silent loss
                self.errors.append(e)


def _wait_both_training(c: Cluster, jobs: list[JobHandle], min_epoch: int = 2) -> None:
    def cond() -> bool:
        sts = [c.store.get(j.id, with_history=False) for j in jobs]
        return all(st["state"] == JobState.RUNNING.value and st["epoch"] >= min_epoch for st in sts)

    wait_for(cond, RUN_S, f"both jobs running past epoch {min_epoch}")


def _check_jobs(c: Cluster, jobs: list[JobHandle], sub: Submitter) -> None:
    for j in jobs:
        final = wait_terminal(c.store, j.id, RUN_S * 2)
        assert final["state"] == JobState.SUCCEEDED.value, c.logs()
        assert_history_complete(final, EPOCHS)
        assert final["restarts"] <= 1, (final["restarts"], c.logs())
        assert len(events_of(c.store, j.id, EventKind.SUCCEEDED)) == 1
        # Every epoch trained once: one end-of-epoch event each (a redo is possible only after a restart).
        counts = [len(events_of(c.store, j.id, EventKind.EPOCH, epoch=e)) for e in range(1, EPOCHS + 1)]
        assert min(counts) == 1 and sum(counts) - EPOCHS <= final["restarts"], (counts, c.logs())
    # Submissions during the failover: each returned an id that exists and trains, or raised a clear error.
    for e in sub.errors:
        assert isinstance(e, redis.RedisError) and str(e), repr(e)
    for h in sub.ok:
        final = wait_terminal(c.store, h.id, RUN_S * 2)
        assert final["state"] == JobState.SUCCEEDED.value, (h.id, c.logs())
    assert sub.ok or sub.errors


def _start(c: Cluster, ha: SentinelCluster) -> list[JobHandle]:
    c.start("w1", "w2")
    c.wait_registered("w1", "w2")
    jobs = [c.submit(job_spec(f"ha-{i}", EPOCHS)) for i in range(2)]
    assert [j.durability for j in jobs] == ["replicated (1)"] * 2  # WAIT 1 confirmed before the ids came back
    _wait_both_training(c, jobs)
    return jobs


def test_primary_sigkill_fails_over(procs: Procs, ha: SentinelCluster, storage_dir: Path) -> None:
    c = _cluster(procs, ha, storage_dir)
    jobs = _start(c, ha)
    old = ha.current_primary()
    sub = Submitter(c.client)
    old.signal(signal.SIGKILL)
    sub.start()
    new = ha.wait_failover(old)
    assert new is not old
    sub.join(RUN_S)
    _check_jobs(c, jobs, sub)
    # The new primary has no replica left: writes say so instead of blocking (TRAIND_REDIS_MIN_REPLICAS=auto).
    later = c.client.submit(job_spec("after-failover", 1))
    assert later.durability.startswith("degraded"), later.durability
    assert wait_terminal(c.store, later.id, RUN_S)["state"] == JobState.SUCCEEDED.value
    for p in [*c.workers.values(), *c.supervisors]:
        assert p.poll() is None, c.logs()  # nobody was restarted: each process followed the new primary


def _resp(*cmd: str) -> bytes:
    return f"*{len(cmd)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in cmd)


def _send_raw(port: int, *cmds: tuple[str, ...]) -> socket.socket:
    """Queue commands on a connection to ``port`` without waiting for replies (the server may be frozen)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"".join(_resp(*c) for c in cmds))
    return s


def test_primary_frozen_rejoins_as_replica_and_its_stale_writes_lose(procs: Procs, ha: SentinelCluster,
                                                                     storage_dir: Path) -> None:
    c = _cluster(procs, ha, storage_dir)
    jobs = _start(c, ha)
    old = ha.current_primary()
    probe = _send_raw(old.port, ("PING",))  # connected before the freeze, like a process' pooled connection
    sub = Submitter(c.client)
    old.signal(signal.SIGSTOP)
    sub.start()
    new = ha.wait_failover(old)
    # Writes that reach the old primary when it wakes, before the sentinels demote it: lost, never winning.
    key = f"traind:job:{jobs[0].id}"
    probe.sendall(_resp("HSET", key, "stale_probe", "1") + _resp("SET", "traind:stale-probe", "1"))
    old.signal(signal.SIGCONT)
    ha.wait_replica_of(old, new)
    probe.close()
    sub.join(RUN_S)
    _check_jobs(c, jobs, sub)
    for node in (new, old):  # the old primary's own writes were discarded by its resync from the new one
        assert node.client().get("traind:stale-probe") is None
        assert node.client().hget(key, "stale_probe") is None
    assert ha.replication(new).get("connected_slaves") == 1
    st: dict[str, Any] = c.store.get(jobs[0].id, with_history=False)
    assert st["state"] == JobState.SUCCEEDED.value
    for p in [*c.workers.values(), *c.supervisors]:
        assert p.poll() is None, c.logs()


def test_fencing_and_acknowledged_commits_survive_failover(ha: SentinelCluster) -> None:
    """In-process, on the real cluster: what was acknowledged before the kill is on the new primary, and the
    attempt whose lease ran out during the failover can no longer write once the supervisor requeued its job."""
    import asyncio

    from daemon.supervisor import Supervisor
    from jobs.errors import FencedError
    from jobs.redis.conn import connect, connect_async
    from jobs.redis.store import JobStore
    from jobs.settings import SupervisorSettings

    settings = ClientSettings(redis_url=ha.url, redis_socket_timeout_s=3.0, redis_wait_timeout_s=1.0)
    store = JobStore(connect(ha.url, settings=settings))
    store.create("fence1", {"attempt": 1, "restarts": 0, "max_restarts": 3, "queue": "default"})
    store.transition("fence1", JobState.RUNNING, attempt=1, fields={"token": "t1", "worker": "old"},
                     lease_ttl_ms=1000)
    store.fenced_update("fence1", "t1", history_set={1: {"epoch": 1, "loss": 0.5}}, ckpt_set={1: {"key": 1}})
    assert store.r.durability.last == "replicated (1)"
    sup = Supervisor(SupervisorSettings(redis_url=ha.url, lease_ttl_s=1.0, redis_socket_timeout_s=3.0))
    assert sup.step().skipped_reason is None

    old = ha.current_primary()
    old.signal(signal.SIGKILL)
    ha.wait_failover(old)
    assert store.history("fence1") == [{"epoch": 1, "loss": 0.5}] and 1 in store.checkpoints("fence1")

    # The old attempt never renews: the supervisor grants one TTL on the new primary, then requeues.
    requeued: list[str] = []
    wait_for(lambda: requeued.extend(sup.step().requeued) or requeued, 60, "the lapsed attempt to be requeued",
             interval=0.1)
    assert requeued == ["fence1"]
    store.transition("fence1", JobState.RUNNING, attempt=2, fields={"token": "t2", "worker": "new"},
                     lease_ttl_ms=5000)
    with pytest.raises(FencedError):
        store.fenced_update("fence1", "t1", history_set={2: {"epoch": 2, "loss": 0.4}})
    assert store.heartbeat("fence1", "t1", 1000) == (False, False)
    store.fenced_update("fence1", "t2", history_set={2: {"epoch": 2, "loss": 0.3}})
    assert [h["loss"] for h in store.history("fence1")] == [0.5, 0.3]

    async def ping() -> bool:  # traind serve's asyncio client follows the new primary too
        r = connect_async(ha.url)
        try:
            return bool(await r.ping()) and (await r.hget("traind:job:fence1", "worker")) == b"new"
        finally:
            await r.aclose()

    assert asyncio.run(ping())

    # The CLI on the Sentinel URL (a fresh process: discovers the new primary through the sentinels).
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "fence1", "--json", "--redis-url", ha.url],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["worker"] == "new"
