"""Supervisors are stateless and may run in pairs: two at once never requeue one lost attempt twice, and one that is
SIGKILLed and restarted mid-run carries on. Each worker kill costs exactly one restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.states import JobState
from tests.conftest import Procs
from tests.fault.helpers import (
    LEASE_TTL_S,
    RUN_S,
    Cluster,
    assert_history_complete,
    job_spec,
    kill_tree,
    messages,
    wait_committed,
    wait_mid_epoch,
    wait_state,
    wait_terminal,
)

pytestmark = pytest.mark.fault
EPOCHS = 10


def test_two_supervisors_and_a_supervisor_restart_never_double_requeue(procs: Procs, redis_url: str,
                                                                       storage_dir: Path) -> None:
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2", supervisors=0)
    s1, s2 = c.supervisor(), c.supervisor()
    job = c.submit(job_spec("two-supervisors", EPOCHS))
    latencies = []

    # Kill 1, with two supervisors racing for the expired lease.
    done = wait_mid_epoch(c.store, job.id, min_epoch=2)["epoch"]
    wait_committed(c.store, job.id, done)
    first = c.holder(job.id)
    kill_ms = c.store.now_ms()
    kill_tree(c.workers[first])
    c.worker("w3")  # the replacement imports TensorFlow while the job moves to the surviving worker
    st = wait_state(c.store, job.id, lambda s: s["attempt"] == 2, LEASE_TTL_S + 10, "the first requeue")
    latencies.append(int(st["requeued_at"]) - kill_ms)

    # Supervisor 1 dies (SIGKILL) and comes back while attempt 2 trains.
    kill_tree(s1)
    c.supervisor()
    c.wait_registered("w3")

    # Kill 2: supervisor 2 dies at the same moment, so the restarted supervisor must handle it alone.
    done = wait_mid_epoch(c.store, job.id, min_epoch=done + 1)["epoch"]
    wait_committed(c.store, job.id, done)
    second = c.holder(job.id)
    assert second != first
    kill_ms = c.store.now_ms()
    kill_tree(c.workers[second])
    kill_tree(s2)
    st = wait_state(c.store, job.id, lambda s: s["attempt"] == 3, LEASE_TTL_S + 10, "the second requeue")
    latencies.append(int(st["requeued_at"]) - kill_ms)

    final = wait_terminal(c.store, job.id, RUN_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert (final["restarts"], final["attempt"], final["worker"]) == (2, 3, "w3")
    assert_history_complete(final, EPOCHS)
    requeues = messages(c.store, job.id, contains="lost (lease expired")
    assert [m.split("; ")[1].split(" (")[0] for m in requeues] == ["requeued as attempt 2", "requeued as attempt 3"]
    assert len(messages(c.store, job.id, startswith="resuming from")) == 2
    # Each requeue was handled once: the supervisor logs show exactly one "requeued as attempt N" per kill.
    logged = "".join(Path(p.log_path).read_text() for p in c.supervisors)  # type: ignore[attr-defined]
    assert logged.count("requeued as attempt 2") == 1 and logged.count("requeued as attempt 3") == 1, logged
    assert all(ms <= (LEASE_TTL_S + 1.5) * 1000 for ms in latencies), latencies
    print(f"\nDETECTION two supervisors: kill->requeue {latencies} ms")
