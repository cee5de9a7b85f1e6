"""Jobs that cannot succeed end cleanly: one that kills its worker every time fails after ``max_restarts`` with a
clear reason; one whose builder raises fails at once (no retry, traceback kept) and its worker keeps serving.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from tests.conftest import Procs
from tests.fault.helpers import RUN_S, STEPS, Cluster, events_of, job_spec, wait_terminal

pytestmark = pytest.mark.fault


def test_raising_builder_fails_once_and_worker_lost_every_time_fails_after_max_restarts(
        procs: Procs, redis_url: str, storage_dir: Path) -> None:
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2")

    # A builder that raises: the job's own bug. One attempt, no retry, error and traceback recorded.
    bad = c.submit(job_spec("raising", 3, builder="tests.models:raising_builder",
                            builder_kwargs={"message": "no such layer: Dense3"}))
    st = wait_terminal(c.store, bad.id, RUN_S)
    assert st["state"] == JobState.FAILED.value, c.logs()
    assert (st["restarts"], st["attempt"]) == (0, 1)
    assert "ValueError: no such layer: Dense3" in st["error"]
    assert "Traceback (most recent call last)" in st["traceback"] and "raising_builder" in st["traceback"]
    assert not events_of(c.store, bad.id, EventKind.REQUEUED)
    failed_on = st["worker"]

    # A job that SIGKILLs its worker in epoch 2, on every attempt: attempt 1 dies, is requeued, attempt 2 dies too
    # (on the other worker - the one the raising job failed on is still serving), and with max_restarts=1 the
    # supervisor fails it instead of feeding it another worker.
    killer = c.submit(job_spec("killer", 4, max_restarts=1,
                               builder_kwargs={"kill_at_epoch": 2, "kill_after_batches": 5, "steps_per_epoch": STEPS}))
    st = wait_terminal(c.store, killer.id, RUN_S)
    assert st["state"] == JobState.FAILED.value, c.logs()
    assert st["error"] == "worker lost 2 times (max_restarts=1)"
    assert (st["restarts"], st["attempt"]) == (1, 2)
    trained_on = {e["worker"] for e in events_of(c.store, killer.id, EventKind.TRAINING)}
    assert trained_on == {"w1", "w2"} and failed_on in trained_on
    # Attempt 2 resumed from the checkpoint of epoch 1 and died at the same step again.
    assert [(e["why"], e["epoch"], e["batch"], e["file"]) for e in events_of(c.store, killer.id, EventKind.RESUMED)
            ] == [("latest", 1, 0, "ckpt/e000001-b000000-a1.npz")]
    assert [h["epoch"] for h in c.store.history(killer.id)] == [1]
    assert all(p.poll() is not None for p in c.workers.values())  # both workers died at the planted step
