"""With ``fit.deterministic`` and a fixed seed, a killed (SIGKILL) or preempted (SIGTERM) and resumed job ends
exactly where the uninterrupted run ends: same early-stopping epoch, same history, same final weights.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from tests.conftest import Procs
from tests.fault.helpers import (
    RUN_S,
    STEPS,
    Cluster,
    assert_same_arrays,
    events_of,
    final_checkpoint,
    h5_arrays,
    job_spec,
    kill_tree,
    status,
    wait_committed,
    wait_mid_epoch,
    wait_state,
    wait_terminal,
)

pytestmark = pytest.mark.fault

# Seed 7 on tests.models' data: val_loss improves until epoch 10, so EarlyStopping(patience=3) stops at epoch 13;
# after epoch 8 the best checkpoint (7) and the latest (8) differ, so the two resume policies take different paths.
EPOCHS = 20
ES = {"monitor": "val_loss", "patience": 3, "restore_best_weights": True}
KILL_AFTER_EPOCH = 8


def det_spec(name: str, resume_from: str = "latest") -> dict[str, Any]:
    return job_spec(name, EPOCHS, deterministic=True, resume_from=resume_from, early_stopping=ES, seed=7)


def assert_same_run(c: Cluster, storage: Path, job_id: str, baseline: dict[str, Any]) -> float:
    """The job ended like the baseline: ES epoch, best epoch, metrics of every epoch, final checkpoint, export."""
    st = c.store.get(job_id, with_history=True)
    assert st["state"] == JobState.SUCCEEDED.value, c.logs()
    assert (st["epoch"], st["stopped_early"], st["best_epoch"]) == (
        baseline["epoch"], baseline["stopped_early"], baseline["best_epoch"])
    assert baseline["stopped_early"] and baseline["epoch"] < EPOCHS, "the baseline should stop early"
    assert len(st["history"]) == len(baseline["history"])
    for mine, ref in zip(st["history"], baseline["history"]):
        for k, v in ref.items():
            if k != "time_s":
                assert mine[k] == pytest.approx(v, abs=1e-6), f"epoch {ref['epoch']} {k}: {mine[k]} != {v}"
    key, arrays = final_checkpoint(c.store, storage, job_id)
    ref_key, ref_arrays = final_checkpoint(c.store, storage, baseline["id"])
    assert key == ref_key
    worst = assert_same_arrays(arrays, ref_arrays)  # weights, optimizer slots, EarlyStopping's best weights
    exported = h5_arrays(storage / "jobs" / job_id / st["final_checkpoint"]["file"])
    ref_exported = h5_arrays(storage / "jobs" / baseline["id"] / baseline["final_checkpoint"]["file"])
    return max(worst, assert_same_arrays(exported, ref_exported))  # restore_best_weights applied


def test_killed_and_resumed_matches_uninterrupted_run(procs: Procs, redis_url: str, storage_dir: Path) -> None:
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2", "w3")
    victims = {"best": c.submit(det_spec("det-best", "best")), "latest": c.submit(det_spec("det-latest", "latest"))}
    base = c.submit(det_spec("det-baseline"))

    at_kill: dict[str, dict[str, Any]] = {}
    for policy, job in victims.items():
        # After a non-improving epoch: the best and the latest checkpoint differ.
        st = wait_mid_epoch(c.store, job.id, min_epoch=KILL_AFTER_EPOCH, also=lambda s: s["best_epoch"] < s["epoch"])
        wait_committed(c.store, job.id, st["epoch"])
        kill_tree(c.workers[c.holder(job.id)])
        at_kill[policy] = c.store.get(job.id, with_history=False)  # frozen until the requeue
        at_kill[policy]["index"] = c.store.checkpoints(job.id)
    # The surviving worker trains the baseline, then resumes both victims.
    baseline = wait_terminal(c.store, base.id, RUN_S)
    assert baseline["restarts"] == 0 and baseline["attempt"] == 1, c.logs()
    for policy, job in victims.items():
        wait_terminal(c.store, job.id, RUN_S)
        st, k = status(c.store, job.id), at_kill[policy]
        assert (st["restarts"], st["attempt"]) == (1, 2)
        target = int(k["best_ckpt_key"]) if policy == "best" else max(k["index"])
        resume_epoch = k["index"][target]["epoch"]
        if policy == "best":
            assert resume_epoch < k["epoch"], "best and latest must differ for the test to mean anything"
        resumed = [(e["why"], e["epoch"], e["batch"], e["file"]) for e in events_of(c.store, job.id, EventKind.RESUMED)]
        assert resumed == [(policy, resume_epoch, 0, f"ckpt/e{resume_epoch:06d}-b000000-a1.npz")]
        worst = assert_same_run(c, storage_dir, job.id, baseline)
        print(f"\nresume_from={policy}: killed after epoch {k['epoch']}, resumed at {resume_epoch}, "
              f"early stop at {st['epoch']}, max |dw| = {worst}")


def test_sigterm_preempts_mid_epoch_without_losing_work(procs: Procs, redis_url: str, storage_dir: Path) -> None:
    """SIGTERM: the worker saves a mid-epoch checkpoint and requeues the job itself, at once (no supervisor runs
    here, and no restart is counted); another worker continues from that batch and ends bit-exact."""
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2", supervisors=0)
    job = c.submit(det_spec("preempt"))
    base = c.submit(det_spec("preempt-baseline"))
    st = wait_mid_epoch(c.store, job.id, min_epoch=3)
    victim = c.holder(job.id)
    kill_tree(c.workers[victim], signal.SIGTERM)

    # No supervisor runs: only the worker itself can requeue the job, and it does not wait for its lease.
    st = wait_state(c.store, job.id, lambda s: s["attempt"] == 2, RUN_S, "the preemption requeue")
    assert c.workers[victim].wait(60) == 0, "a preempted worker exits cleanly"
    assert [e["attempt"] for e in events_of(c.store, job.id, EventKind.PREEMPTED)] == [2]
    preempted = events_of(c.store, job.id, EventKind.CHECKPOINT)
    assert len(preempted) == 1, c.store.events(job.id)
    epoch, batch = preempted[0]["epoch"], preempted[0]["batch"]
    assert epoch == st["epoch"] + 1 and 0 < batch < STEPS  # mid-epoch: in the epoch after the last finished one

    baseline = wait_terminal(c.store, base.id, RUN_S)
    final = wait_terminal(c.store, job.id, RUN_S)
    assert (final["preemptions"], final["restarts"], final["attempt"]) == (1, 0, 2)
    assert final.get("lease_expired_at") is None, "the lease never had to expire"
    # The epoch the preemption event named (1-based, as Keras), in the resume and the next attempt's start.
    resumed = [(e["why"], e["epoch"], e["batch"], e["file"]) for e in events_of(c.store, job.id, EventKind.RESUMED)]
    assert resumed == [("preemption", epoch, batch, f"ckpt/e{epoch - 1:06d}-b{batch:06d}-a1.npz")]
    assert events_of(c.store, job.id, EventKind.TRAINING, attempt=2, worker=final["worker"], epoch=epoch,
                     batch=batch + 1)
    worst = assert_same_run(c, storage_dir, job.id, baseline)
    print(f"\npreempted at epoch {epoch} batch {batch}/{STEPS}, max |dw| = {worst}")
