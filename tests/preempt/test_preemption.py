"""Issue 24 item 1 with real parts: redis-server, a worker and supervisor processes, a tiny Keras model paced so that
an epoch lasts ~0.5-0.8 s. One worker start (the expensive part) serves three phases:

(b) no flapping: with a minimum run time longer than the test, the supervisor passes over the running low job again
    and again (its held counter says so) and never flags it;
(a) a supervisor with a short minimum preempts it for the waiting high job, which runs and succeeds; the low job
    resumes at the batch it saved (no epoch trained twice), ``preemptions`` 1, ``restarts`` 0, the events name the
    high job;
(c) a job with ``preemptible: false`` is passed over, again and again, and never flagged.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from jobs.contract import keys
from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from tests.conftest import Procs, wait_for
from tests.fault.helpers import (
    RUN_S,
    STEPS,
    Cluster,
    events_of,
    job_spec,
    kill_tree,
    status,
    wait_mid_epoch,
    wait_state,
    wait_terminal,
)

pytestmark = pytest.mark.fault
EPOCHS = 8


def spec(name: str, epochs: int, priority: str, **extra: Any) -> dict[str, Any]:
    s = job_spec(name, epochs)
    s["resources"] = {"priority": priority}
    return {**s, **extra}


def held(c: Cluster, reason: str) -> int:
    """Supervisor passes that saw a waiting job blocked by a lower-priority one and held back, by reason."""
    return int(float(c.store.r.hget(keys.METRICS_COUNTERS, f"preemptions_held:{reason}") or 0))


def running(c: Cluster, job_id: str) -> dict[str, Any]:
    return wait_state(c.store, job_id, lambda s: s["state"] == JobState.RUNNING.value, RUN_S, f"{job_id} running")


def test_priority_preemption_no_flapping_exact_resume_and_opt_out(procs: Procs, redis_url: str,
                                                                  storage_dir: Path) -> None:
    c = Cluster(procs, redis_url, storage_dir)
    c.worker("w1")
    patient = c.procs.supervisor(c.url, c.storage, "--interval-s", "0.2",
                                 env={**c.env, "TRAIND_PREEMPT_MIN_RUN_S": "3600"})
    low = c.submit(spec("low", EPOCHS, "low"))
    c.wait_registered("w1")
    running(c, low.id)

    # (b) The high job waits: five passes hold the preemption back (the low job ran less than an hour).
    high = c.submit(spec("high", 2, "high"))
    wait_for(lambda: held(c, "min_run") >= 5, 30, "five supervisor passes holding the preemption back")
    st = status(c.store, low.id)
    assert (st["state"], st["preemptions"], st.get("preempt_requested")) == ("running", 0, None), c.logs()
    assert status(c.store, high.id)["state"] == JobState.QUEUED.value
    assert not events_of(c.store, low.id, EventKind.PREEMPT_REQUESTED)

    # (a) A supervisor with a one-second minimum preempts the low job, now past its first epoch.
    wait_mid_epoch(c.store, low.id, min_epoch=1)
    c.env["TRAIND_PREEMPT_MIN_RUN_S"] = "1"
    c.supervisor()
    kill_tree(patient, signal.SIGTERM)
    assert patient.wait(30) == 0
    st = running(c, high.id)
    assert st["worker"] == "w1"
    assert status(c.store, low.id)["state"] in (JobState.REQUEUED.value, JobState.QUEUED.value)
    optout = c.submit(spec("optout", 30, "low", preemptible=False))  # queued behind the requeued low job
    assert wait_terminal(c.store, high.id)["state"] == JobState.SUCCEEDED.value
    final = wait_terminal(c.store, low.id)
    assert (final["state"], final["preemptions"], final["restarts"], final["attempt"]) == ("succeeded", 1, 0, 2), \
        c.logs()
    assert final.get("preempted_for") == high.id and final.get("preempt_requested") is None
    # The events name the job that caused it: the supervisor's request and the worker's requeue.
    (req,) = events_of(c.store, low.id, EventKind.PREEMPT_REQUESTED)
    assert req["by"] == high.id and req["priority"] == "high"
    (pre,) = events_of(c.store, low.id, EventKind.PREEMPTED)
    assert pre["by"] == high.id and high.id in pre["msg"] and pre["attempt"] == 2
    assert [e["victim"] for e in events_of(c.store, high.id, EventKind.PREEMPT_REQUESTED)] == [low.id]
    # It resumed at the batch it saved, and no epoch was trained twice. (A flag seen on an epoch's last batch stops
    # at that epoch's end instead, and resumes from its epoch-end checkpoint: nothing to redo either.)
    resumed = [(e["why"], e["epoch"], e["batch"]) for e in events_of(c.store, low.id, EventKind.RESUMED)]
    ck = events_of(c.store, low.id, EventKind.CHECKPOINT)
    if ck:
        epoch, batch = ck[0]["epoch"], ck[0]["batch"]
        assert len(ck) == 1 and epoch >= 2 and 0 < batch < STEPS, ck
        assert resumed == [("preemption", epoch, batch)]
        assert events_of(c.store, low.id, EventKind.TRAINING, attempt=2, epoch=epoch, batch=batch + 1)
    else:
        assert len(resumed) == 1 and resumed[0][0] == "preemption" and resumed[0][2] == 0, resumed
        epoch, batch = resumed[0][1], 0
    assert [e["epoch"] for e in events_of(c.store, low.id, EventKind.EPOCH)] == list(range(1, EPOCHS + 1))
    assert [h["epoch"] for h in final["history"]] == list(range(1, EPOCHS + 1))

    # (c) The opted-out job is passed over while a high job waits; it is never flagged.
    running(c, optout.id)
    blocked = c.submit(spec("high-2", 1, "high"))
    before = held(c, "not_preemptible")
    wait_for(lambda: held(c, "not_preemptible") >= before + 5, 30, "five passes over the opted-out job")
    st = status(c.store, optout.id)
    assert (st["state"], st["preemptions"], st.get("preempt_requested")) == ("running", 0, None), c.logs()
    assert status(c.store, blocked.id)["state"] == JobState.QUEUED.value
    assert not events_of(c.store, optout.id, EventKind.PREEMPT_REQUESTED)
    print(f"\nlow job preempted at epoch {epoch} batch {batch}/{STEPS}; resumed there")
    for job in (blocked, optout):
        job.cancel()
