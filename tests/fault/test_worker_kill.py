"""SIGKILL of a worker's whole process tree mid-epoch: the supervisor requeues the job once, after its lease lapsed
(how fast is bench/detection.py's question), and a second worker resumes from the newest committed checkpoint. A torn
or corrupted checkpoint is never loaded: resume falls back to the previous valid one and says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from tests.conftest import Procs
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


def test_sigkill_mid_epoch_resumes_on_another_worker(procs: Procs, redis_url: str, storage_dir: Path) -> None:
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2")
    job = c.submit(job_spec("sigkill", epochs=7))
    at_kill = wait_mid_epoch(c.store, job.id, min_epoch=2)
    done = at_kill["epoch"]
    wait_committed(c.store, job.id, done)
    victim = c.holder(job.id)
    kill_tree(c.workers[victim])
    latest = c.store.checkpoints(job.id)[max(c.store.checkpoints(job.id))]  # frozen now: nobody owns the job
    assert latest["epoch"] >= done and latest["batch"] == 0

    st = wait_state(c.store, job.id, lambda s: s["attempt"] == 2, LEASE_TTL_S + 60, "the requeue")
    requeued_at, expired_at = int(st["requeued_at"]), int(st["lease_expired_at"])  # Redis clock, ms
    # Requeued by the supervisor only once the lease lapsed (how fast is bench/detection.py's question).
    assert expired_at <= requeued_at, (expired_at, requeued_at)

    final = wait_terminal(c.store, job.id, RUN_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert (final["restarts"], final["attempt"], final["preemptions"]) == (1, 2, 0)
    assert final["worker"] != victim
    assert_history_complete(final, 7)
    # The right checkpoint: the newest epoch-end one committed before the kill (the partial epoch is redone).
    e = latest["epoch"]
    resumed = [(r["why"], r["epoch"], r["batch"], r["file"]) for r in events_of(c.store, job.id, EventKind.RESUMED)]
    assert resumed == [("latest", e, 0, f"ckpt/e{e:06d}-b000000-a1.npz")]
    assert events_of(c.store, job.id, EventKind.TRAINING, attempt=2, worker=final["worker"], epoch=e + 1)
    assert [r["attempt"] for r in events_of(c.store, job.id, EventKind.REQUEUED)] == [2]  # requeued once


def test_corrupt_checkpoint_is_never_loaded(procs: Procs, redis_url: str, storage_dir: Path) -> None:
    """Kill the worker, then damage the newest committed checkpoint (and leave the debris of a write the kill
    interrupted): the next attempt skips it with an event and resumes from the previous valid checkpoint."""
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2")
    job = c.submit(job_spec("corrupt", epochs=6))
    done = wait_mid_epoch(c.store, job.id, min_epoch=3)["epoch"]
    wait_committed(c.store, job.id, done)
    kill_tree(c.workers[c.holder(job.id)])

    ckpt_dir = storage_dir / "jobs" / job.id / "ckpt"
    index = c.store.checkpoints(job.id)  # frozen now: nobody owns the job until the supervisor requeues it
    newest = index[max(index)]
    done = newest["epoch"]
    assert done >= 3 and newest["batch"] == 0
    target = storage_dir / "jobs" / job.id / newest["file"]
    size = target.stat().st_size
    with open(target, "r+b") as f:  # a torn write: the file keeps its name but loses its tail
        f.truncate(size // 2)
    # What a kill during a checkpoint write leaves: a half-written temp file and an uncommitted checkpoint file.
    (ckpt_dir / f".e{done + 1:06d}-b000000-a1.npz.x1y2.tmp").write_bytes(os.urandom(512))
    (ckpt_dir / f"e{done + 1:06d}-b000000-a1.npz").write_bytes(os.urandom(512))

    final = wait_terminal(c.store, job.id, RUN_S + LEASE_TTL_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert (final["restarts"], final["attempt"]) == (1, 2)
    assert_history_complete(final, 6)
    skipped = events_of(c.store, job.id, EventKind.SKIPPED_CHECKPOINT)
    assert [(s["epoch"], s["file"]) for s in skipped] == [(done, newest["file"])]
    assert "failed its sha256 check" in skipped[0]["msg"]
    prev = [k for k in index if k < max(index)]
    assert prev, f"no earlier checkpoint to fall back to: {sorted(index)}"
    fallback = index[max(prev)]
    assert [(r["why"], r["epoch"], r["file"]) for r in events_of(c.store, job.id, EventKind.RESUMED)] == [
        ("fallback", fallback["epoch"], fallback["file"])]
    # The damaged checkpoint left the index (its epoch was redone); the final index only holds verified files.
    for m in c.store.checkpoints(job.id).values():
        assert m["file"] != newest["file"] or m["attempt"] != 1
