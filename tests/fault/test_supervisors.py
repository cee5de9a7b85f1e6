"""Supervisors are stateless and may run in pairs: two at once never requeue one lost attempt twice, and one that is
SIGKILLed and restarted mid-run carries on. Each worker kill costs exactly one restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from tests.conftest import Procs, wait_for
from tests.fault.helpers import (
    LEASE_TTL_S,
    RUN_S,
    Cluster,
    assert_history_complete,
    events_of,
    job_spec,
    kill_tree,
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
    # Three workers, all warm before the job starts: each kill moves the job to a live worker at once (a worker
    # started after a kill may still be importing TensorFlow when a short job would already have finished).
    c.start("w1", "w2", "w3", supervisors=0)
    s1, s2 = c.supervisor(), c.supervisor()
    c.wait_registered("w1", "w2", "w3")
    job = c.submit(job_spec("two-supervisors", EPOCHS))

    # Kill 1, with two supervisors racing for the expired lease.
    done = wait_mid_epoch(c.store, job.id, min_epoch=2)["epoch"]
    wait_committed(c.store, job.id, done)
    first = c.holder(job.id)
    kill_tree(c.workers[first])
    wait_state(c.store, job.id, lambda s: s["attempt"] == 2, LEASE_TTL_S + 60, "the first requeue")
    # The record changes before the requeuing supervisor logs it: kill s1 only once one of them has logged it.
    wait_for(lambda: "requeued as attempt 2" in supervisor_logs(c), 60, "the requeue's log line")

    # Supervisor 1 dies (SIGKILL) and comes back while attempt 2 trains.
    kill_tree(s1)
    c.supervisor()

    # Kill 2: supervisor 2 dies at the same moment, so the restarted supervisor must handle it alone.
    done = wait_mid_epoch(c.store, job.id, min_epoch=done + 1)["epoch"]
    wait_committed(c.store, job.id, done)
    second = c.holder(job.id)
    assert second != first
    kill_tree(c.workers[second])
    kill_tree(s2)
    wait_state(c.store, job.id, lambda s: s["attempt"] == 3, LEASE_TTL_S + 60, "the second requeue")

    final = wait_terminal(c.store, job.id, RUN_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert (final["restarts"], final["attempt"]) == (2, 3)
    assert final["worker"] not in (first, second) and c.workers[final["worker"]].poll() is None
    assert_history_complete(final, EPOCHS)
    assert [e["attempt"] for e in events_of(c.store, job.id, EventKind.REQUEUED)] == [2, 3]
    assert len(events_of(c.store, job.id, EventKind.RESUMED)) == 2
    # Each requeue was handled once: the supervisor logs show exactly one "requeued as attempt N" per kill.
    logged = supervisor_logs(c)
    assert logged.count("requeued as attempt 2") == 1 and logged.count("requeued as attempt 3") == 1, logged


def supervisor_logs(c: Cluster) -> str:
    return "".join(Path(p.log_path).read_text() for p in c.supervisors)  # type: ignore[attr-defined]
