"""SIGSTOP a worker past its lease: the job is requeued and resumed elsewhere. After SIGCONT the stale worker is
fenced: it writes nothing more (history, events, checkpoint index, committed checkpoint files), abandons the job,
and the job still succeeds exactly once.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from jobs.storage.base import sha256_file
from tests.conftest import Procs, log_of, wait_for
from tests.fault.helpers import (
    LEASE_TTL_S,
    RUN_S,
    STEPS,
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


def test_sigstopped_worker_is_fenced_after_sigcont(procs: Procs, redis_url: str, storage_dir: Path) -> None:
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2")
    job = c.submit(job_spec("sigstop", EPOCHS))
    done = wait_mid_epoch(c.store, job.id, min_epoch=2)["epoch"]
    wait_committed(c.store, job.id, done)
    stale_id = c.holder(job.id)
    stale = c.workers[stale_id]
    kill_tree(stale, signal.SIGSTOP)  # frozen mid-epoch: no heartbeat, but it holds its token and its state

    # Requeued by the supervisor, resumed by the other worker.
    wait_for(lambda: events_of(c.store, job.id, EventKind.TRAINING, attempt=2), LEASE_TTL_S + 60,
             "the job to resume on the other worker")
    st = c.store.get(job.id, with_history=False)
    assert st["worker"] != stale_id and st["state"] == JobState.RUNNING.value
    a1_index = {k for k, m in c.store.checkpoints(job.id).items() if m["attempt"] == 1}
    ckpt_dir = storage_dir / "jobs" / job.id / "ckpt"
    a1_files = {p.name for p in ckpt_dir.glob("*-a1.*")}
    resume_epoch = st["resume_epoch"]
    # Let attempt 2 finish an epoch, so the stale worker wakes up in the middle of someone else's run.
    wait_state(c.store, job.id, lambda s: s["epoch"] > resume_epoch, RUN_S, "attempt 2 to finish an epoch")
    kill_tree(stale, signal.SIGCONT)

    # It notices (its heartbeat is refused, or its next fenced write is) and abandons the job without writing.
    wait_for(lambda: re.search(r"lease lost|fenced off", log_of(stale)), 60, "the stale worker to notice")
    final = wait_terminal(c.store, job.id, RUN_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert (final["restarts"], final["attempt"], final["worker"]) == (1, 2, st["worker"])
    assert_history_complete(final, EPOCHS)
    assert stale.poll() is None, "the stale worker survives and keeps serving"
    log = log_of(stale)
    assert f"job {job.id} attempt 1 fenced off" in log, log
    assert "final state" not in log  # it never tried to record an outcome for a job it no longer owns

    # Nothing of attempt 1 after the requeue: index entries and committed files are a subset of what it had then.
    a1_now = {k for k, m in c.store.checkpoints(job.id).items() if m["attempt"] == 1}
    assert a1_now <= a1_index
    assert {p.name for p in ckpt_dir.glob("*-a1.*")} <= a1_files, "the stale worker left a new checkpoint file"
    events = c.store.events(job.id)
    requeued = [i for i, e in enumerate(events) if e["kind"] == EventKind.REQUEUED.value]
    assert len(requeued) == 1 and events[requeued[0]]["attempt"] == 2, events
    later = events[requeued[0] + 1:]  # all of it must come from attempt 2
    epochs_logged = [e["epoch"] for e in later if e["kind"] == EventKind.EPOCH.value]
    # Attempt 2 logs each epoch it trains exactly once; a stale write would duplicate one of them.
    assert epochs_logged == list(range(resume_epoch + 1, EPOCHS + 1)), later
    assert len(events_of(c.store, job.id, EventKind.SUCCEEDED)) == 1
    assert not [e for e in later if e.get("worker") == stale_id or stale_id in e["msg"]], later


def test_stale_worker_never_overwrites_exported_models(procs: Procs, redis_url: str, storage_dir: Path,
                                                       tmp_path: Path) -> None:
    """A worker frozen between an epoch's last batch and its end-of-epoch writes wakes up after another worker
    finished the job: it must not replace the job's best/final model files (``load_model`` verifies them against
    the sha256 in the job record, so an overwrite would make the finished job's model unloadable)."""
    marker = tmp_path / "paused"
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2")
    job = c.submit(job_spec("stale-export", 4, builder_kwargs={
        "pause_in_validation_of_epoch": 2, "steps_per_epoch": STEPS, "pause_marker": str(marker)}))
    wait_for(lambda: marker.exists() and marker.read_text(), RUN_S, "a worker to freeze itself in epoch 2")
    pid = int(marker.read_text())
    stale_id = next(w for w, p in c.workers.items() if p.pid == pid)
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("T"), 10, "SIGSTOP")

    final = wait_terminal(c.store, job.id, RUN_S + LEASE_TTL_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert (final["restarts"], final["attempt"]) == (1, 2) and final["worker"] != stale_id
    exports = {name: final[f"{name}_checkpoint"] for name in ("best", "final")}
    job_dir = storage_dir / "jobs" / job.id
    assert all(sha256_file(job_dir / e["file"]) == e["sha256"] for e in exports.values())

    kill_tree(c.workers[stale_id], signal.SIGCONT)  # it finishes validating epoch 2, then reaches the epoch end
    wait_for(lambda: f"job {job.id} attempt 1 fenced off" in log_of(c.workers[stale_id]), 60, "the stale worker")
    for e in exports.values():
        assert sha256_file(job_dir / e["file"]) == e["sha256"], f"the stale worker overwrote {e['file']}"
    assert not list(job_dir.glob("*.tmp")) and c.store.get(job.id, with_history=False)["state"] == "succeeded"
