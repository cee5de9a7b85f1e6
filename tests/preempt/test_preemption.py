"""Issue 24 item 1 with real parts: redis-server, worker and supervisor processes, a tiny Keras model paced so that
an epoch lasts ~0.5-0.8 s. A high-priority job preempts a low one (which resumes at its batch, nothing redone);
never before the minimum run time; never a job that opted out."""

from __future__ import annotations

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
    status,
    wait_mid_epoch,
    wait_state,
    wait_terminal,
)

pytestmark = pytest.mark.fault


def spec(name: str, epochs: int, priority: str, **extra: Any) -> dict[str, Any]:
    s = job_spec(name, epochs)
    s["resources"] = {"priority": priority}
    return {**s, **extra}


def held(c: Cluster, reason: str) -> int:
    return int(float(c.store.r.hget(keys.METRICS_COUNTERS, f"preemptions_held:{reason}") or 0))


def test_high_job_preempts_a_low_one_which_resumes_at_its_batch_and_opt_out_is_respected(
        procs: Procs, redis_url: str, storage_dir: Path) -> None:
    c = Cluster(procs, redis_url, storage_dir, env={"TRAIND_PREEMPT_MIN_RUN_S": "1"})
    c.start("w1")
    # (c) A low job that opted out keeps the only worker while a high one waits: the supervisor passes over it.
    optout = c.submit(spec("optout", 3, "low", preemptible=False))
    c.wait_registered("w1")
    wait_state(c.store, optout.id, lambda s: s["state"] == JobState.RUNNING.value, RUN_S, "opt-out job running")
    first = c.submit(spec("high-1", 1, "high"))
    low = c.submit(spec("low", 5, "low"))
    wait_for(lambda: held(c, "not_preemptible") >= 3 or status(c.store, optout.id)["state"] != "running", RUN_S,
             "three supervisor passes holding back")
    assert held(c, "not_preemptible") >= 3, "the opt-out job ended before the supervisor passed over it thrice"
    assert status(c.store, optout.id)["state"] == JobState.RUNNING.value
    done = wait_terminal(c.store, optout.id)
    assert (done["state"], done["preemptions"], done["attempt"]) == ("succeeded", 0, 1), c.logs()
    assert not events_of(c.store, optout.id, EventKind.PREEMPT_REQUESTED)
    assert wait_terminal(c.store, first.id)["state"] == JobState.SUCCEEDED.value  # popped before the low one

    # (a) The low job runs past its first epoch; a high job arrives and takes the worker within seconds.
    wait_mid_epoch(c.store, low.id, min_epoch=1)
    high = c.submit(spec("high-2", 2, "high"))
    submitted = c.store.now_ms()
    st = wait_state(c.store, high.id, lambda s: s["state"] == JobState.RUNNING.value, RUN_S, "the high job running")
    assert st["worker"] == "w1"
    took_s = (int(st["started_at"]) - submitted) / 1000
    assert status(c.store, low.id)["state"] in (JobState.REQUEUED.value, JobState.QUEUED.value)
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
    # It resumed at the batch it saved, and no epoch was trained twice.
    (ck,) = events_of(c.store, low.id, EventKind.CHECKPOINT)
    epoch, batch = ck["epoch"], ck["batch"]
    assert 0 < batch < STEPS
    resumed = [(e["why"], e["epoch"], e["batch"]) for e in events_of(c.store, low.id, EventKind.RESUMED)]
    assert resumed == [("preemption", epoch, batch)]
    assert [e["epoch"] for e in events_of(c.store, low.id, EventKind.EPOCH)] == [1, 2, 3, 4, 5]
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3, 4, 5]
    print(f"\nhigh job running {took_s:.2f} s after submit; low job preempted at epoch {epoch} batch {batch}/{STEPS}")


def test_no_preemption_before_the_minimum_run_time(procs: Procs, redis_url: str, storage_dir: Path) -> None:
    """(b) With a minimum run time longer than the test, the supervisor passes over the running low job again and
    again (its held counter says so) and never flags it."""
    c = Cluster(procs, redis_url, storage_dir, env={"TRAIND_PREEMPT_MIN_RUN_S": "3600"})
    c.start("w1")
    low = c.submit(spec("low", 50, "low"))
    c.wait_registered("w1")
    wait_state(c.store, low.id, lambda s: s["state"] == JobState.RUNNING.value, RUN_S, "the low job running")
    high = c.submit(spec("high", 1, "high"))
    wait_for(lambda: held(c, "min_run") >= 5, 30, "five supervisor passes holding the preemption back")
    st = status(c.store, low.id)
    assert (st["state"], st["preemptions"], st.get("preempt_requested")) == ("running", 0, None), c.logs()
    assert status(c.store, high.id)["state"] == JobState.QUEUED.value
    assert not events_of(c.store, low.id, EventKind.PREEMPT_REQUESTED)
    for job in (high, low):
        job.cancel()
