"""Redis SIGKILLed and restarted (AOF) mid-training: the job finishes with nothing lost, and the worker and the
supervisor reconnect on their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.contract.events import EventKind
from jobs.contract.ids import new_job_id
from jobs.contract.states import JobState
from testkit.cluster import RedisServer
from tests.conftest import Procs
from tests.fault.helpers import (
    RUN_S,
    Cluster,
    assert_history_complete,
    events_of,
    job_spec,
    wait_mid_epoch,
    wait_terminal,
)

pytestmark = pytest.mark.fault
EPOCHS = 8


@pytest.fixture()
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with an append-only file, so a SIGKILL loses no acknowledged write."""
    srv = RedisServer(tmp_path / "redis-aof", aof=True).start()
    yield srv
    srv.stop(kill=True)


def test_redis_sigkill_and_restart_mid_training(procs: Procs, aof_redis: RedisServer, storage_dir: Path) -> None:
    # A 10 s lease: the supervisor's grace after a Redis restart is one TTL, and the worker's reconnect (client
    # retries with backoff) must fit in it even on a loaded machine; the property is "an outage costs no restart".
    c = Cluster(procs, aof_redis.url, storage_dir, env={"TRAIND_LEASE_TTL_S": "10", "TRAIND_HEARTBEAT_INTERVAL_S": "1"})
    c.start("w1")
    job = c.submit(job_spec("redis-restart", EPOCHS))
    wait_mid_epoch(c.store, job.id, min_epoch=2)
    aof_redis.restart(kill=True)  # SIGKILL redis-server, start it again on the same port from its AOF

    final = wait_terminal(c.store, job.id, RUN_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert_history_complete(final, EPOCHS)
    # The outage cost no restart: the supervisor waits one TTL after a Redis restart before judging leases, and
    # the worker's heartbeat reconnected meanwhile.
    assert (final["restarts"], final["attempt"]) == (0, 1), c.logs()
    assert len(events_of(c.store, job.id, EventKind.SUCCEEDED)) == 1
    assert int(c.store.r.info("server")["uptime_in_seconds"]) < RUN_S  # really a new server

    # Both reconnected: a job whose submitter died before enqueueing it (record only, no queue message) is
    # enqueued by the supervisor and trained by the worker, through the new server.
    orphan = new_job_id()
    fields = c.client._fields(c.client._validate(job_spec("after-restart", 2)), orphan, "ada")  # half submit
    c.store.create(orphan, fields)
    again = wait_terminal(c.store, orphan, RUN_S)
    assert again["state"] == JobState.SUCCEEDED.value, c.logs()
    assert again["worker"] == "w1"
