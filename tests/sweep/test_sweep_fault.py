"""Sweeps with real workers, supervisors (which run the controller) and redis-server: a sweep that completes with a
pruned trial; a sweep whose worker and whose driving supervisor are both SIGKILLed mid-trial, where no trial restarts
from scratch and every epoch of every trial reaches the study exactly once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import redis

from jobs.contract.events import EventKind
from jobs.sweep import records
from jobs.sweep.study import storage
from tests.conftest import Procs, wait_for
from tests.fault.helpers import Cluster, events_of, kill_tree, wait_committed, wait_mid_epoch, wait_state
from tests.sweep.conftest import sweep_file, tiny_job

pytestmark = pytest.mark.fault
SWEEP_S = 240.0


def _status(cli: Any, sweep_id: str) -> dict[str, Any]:
    rc, out, err = cli("sweep", "status", sweep_id, "--json")
    assert rc == 0, err
    return json.loads(out)


def _wait_finished(cli: Any, sweep_id: str, c: Cluster) -> dict[str, Any]:
    try:
        wait_for(lambda: _status(cli, sweep_id)["state"] != "running", SWEEP_S, f"sweep {sweep_id} to finish",
                 interval=0.5)
    except AssertionError:
        raise AssertionError(f"{_status(cli, sweep_id)}\n{c.logs()}") from None
    return _status(cli, sweep_id)


def _journal_reports(r: redis.Redis, sweep_id: str) -> Counter[tuple[int, int]]:
    """(trial_id, step) of every intermediate value the journal holds: a duplicate report would count twice."""
    from optuna.storages.journal._storage import JournalOperation

    from jobs.sweep.study import RedisJournal

    logs = RedisJournal(r, records.sweep_key(sweep_id, "optuna")).read_logs(0)
    return Counter((log["trial_id"], log["step"]) for log in logs
                   if log["op_code"] == JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE)


def _grid_lr_sweep(name: str, epochs: int, pruner: dict[str, Any]) -> dict[str, Any]:
    """Two trials, one after the other (parallel 1: the second is submitted once the study has the first's end, so
    the pruner judges it against a finished trial whatever the timing): with grid seed 1 the good learning rate runs
    first, then a hopeless one (1e-7) that the pruner must stop."""
    return {"name": name, "job": tiny_job(epochs=epochs), "trials": 2, "parallel": 1,
            "space": {"model.builder_kwargs.learning_rate": {"type": "categorical", "choices": [0.05, 1.0e-7]}},
            "sampler": {"type": "grid", "seed": 1}, "pruner": pruner}


def _submit(cli: Any, tmp_path: Path, data: dict[str, Any]) -> str:
    rc, out, err = cli("sweep", "submit", str(sweep_file(tmp_path, data, f"{data['name']}.yaml")), "--json")
    assert rc == 0, err
    return str(json.loads(out)["id"])


def _check_pruned_sweep(cli: Any, c: Cluster, r: redis.Redis, sweep_id: str, epochs: int, pruned_at: int) -> None:
    """Wait for the sweep's end; its second trial was pruned at ``pruned_at`` and stopped right there."""
    _wait_finished(cli, sweep_id, c)
    # The pruned trial's worker asked the pruner at that epoch's end and stopped there: its job is cancelled (its
    # checkpoints kept) after exactly that epoch, never later, never "succeeded".
    st = _status(cli, sweep_id)
    bad_job = wait_state(c.store, st["trials"][1]["job"], lambda s: s["state"] != "running", 30,
                         "the pruned job to stop")
    st = _status(cli, sweep_id)
    assert st["state"] == "succeeded", st
    good, bad = st["trials"]
    assert good["params"] == {"model.builder_kwargs.learning_rate": 0.05}, "precondition: grid seed 1's order"
    assert (good["state"], good["pruned"], good["epochs_done"], good["reported"]) == ("succeeded", False, epochs,
                                                                                     epochs)
    assert (bad["state"], bad["pruned"], bad["pruned_at"], bad["reported"]) == ("pruned", True, pruned_at, pruned_at)
    assert bad["epochs_done"] == pruned_at, bad
    assert (bad_job["state"], bad_job["epoch"]) == ("cancelled", pruned_at), bad_job
    assert sorted(h["epoch"] for h in c.store.history(bad["job"])) == list(range(1, pruned_at + 1))
    assert [e["pruned_at"] for e in events_of(c.store, bad["job"], EventKind.NOTE) if "pruned_at" in e] == [pruned_at]
    assert bad["value"] > good["value"]
    assert st["best"] == {"number": 0, "job": good["job"], "value": good["value"], "params": good["params"]}
    # The study agrees (opened as a user would, with optuna.load_study), each epoch reported once.
    study = optuna.load_study(study_name=records.study_name(sweep_id), storage=storage(r, sweep_id))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    assert sorted(study.trials[1].intermediate_values) == list(range(1, pruned_at + 1))
    assert study.best_value == good["value"] and sorted(study.trials[0].intermediate_values) == list(
        range(1, epochs + 1))
    assert max(_journal_reports(r, sweep_id).values()) == 1
    history = c.store.history(good["job"])
    assert study.trials[0].intermediate_values == {h["epoch"]: h["val_loss"] for h in history}
    assert good["value"] == min(h["val_loss"] for h in history)


def test_sweep_completes_and_prunes_a_bad_trial(cli: Any, procs: Procs, redis_url: str, storage_dir: Path,
                                                tmp_path: Path, r: redis.Redis) -> None:
    """Two sweeps at once on one worker. The median pruner stops its hopeless trial after its first epoch; successive
    halving, with its first rung at epoch 2 of 4, judges its hopeless trial at epoch 2 only (not at epoch 1). Each
    pruned trial's job stops at exactly the epoch it was pruned at (epochs_done == pruned_at) and the trial is shown
    as pruned, not failed."""
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1")
    median = _submit(cli, tmp_path, _grid_lr_sweep("median", 3, {"type": "median", "n_startup_trials": 1}))
    sh = _submit(cli, tmp_path, _grid_lr_sweep("sh", 4, {"type": "successive_halving", "min_resource": 2,
                                                          "reduction_factor": 2}))
    _check_pruned_sweep(cli, c, r, median, epochs=3, pruned_at=1)
    rc, out, _ = cli("sweep", "status", median)
    assert rc == 0 and "pruned" in out and "(pruned @1)" in out
    _check_pruned_sweep(cli, c, r, sh, epochs=4, pruned_at=2)
    assert not r.hlen(records.TRIAL_JOBS)  # every link of a finished trial removed


def test_worker_and_controller_killed_mid_sweep(cli: Any, procs: Procs, redis_url: str, storage_dir: Path,
                                                tmp_path: Path, r: redis.Redis) -> None:
    """SIGKILL the worker of a running trial, and the supervisor driving the sweep: the trial's job resumes from its
    checkpoint on the other worker (never from scratch), the other supervisor takes the controller lease over, and
    the study ends with each finished epoch of each trial reported exactly once."""
    epochs = 6
    c = Cluster(procs, redis_url, storage_dir)
    c.start("w1", "w2", supervisors=2)
    data = {"name": "kills", "job": tiny_job(epochs=epochs), "trials": 3, "parallel": 2,
            "space": {"model.builder_kwargs.units": {"type": "int", "low": 4, "high": 16}},
            "sampler": {"type": "random", "seed": 0}}
    rc, out, err = cli("sweep", "submit", str(sweep_file(tmp_path, data)), "--json")
    assert rc == 0, err
    sweep_id = json.loads(out)["id"]

    first = wait_for(lambda: next((t for t in _status(cli, sweep_id)["trials"] if t["job"]), None), 60,
                     "a trial's job submitted")
    job0 = first["job"]
    done = wait_mid_epoch(c.store, job0, min_epoch=1)["epoch"]
    wait_committed(c.store, job0, done)
    kill_tree(c.workers[c.holder(job0)])
    leader = wait_for(lambda: r.get(records.CONTROLLER_LEASE), 30, "a controller lease").decode()
    victim = next(p for p in c.supervisors if f"-{p.pid}-" in leader)
    kill_tree(victim)

    st = _wait_finished(cli, sweep_id, c)
    assert st["state"] == "succeeded", st
    assert r.get(records.CONTROLLER_LEASE).decode() != leader  # the other supervisor drove the rest
    assert [t["state"] for t in st["trials"]] == ["succeeded"] * 3, st["trials"]
    t0 = next(t for t in st["trials"] if t["job"] == job0)
    assert t0["restarts"] == 1 and t0["epochs_done"] == epochs
    resumed = events_of(c.store, job0, EventKind.RESUMED)
    assert resumed and all(e["epoch"] >= 1 for e in resumed), resumed  # from a checkpoint, never from scratch
    assert not events_of(c.store, job0, EventKind.NO_CHECKPOINT)
    # Exactly once: every epoch of every trial in the journal, none twice.
    reports = _journal_reports(r, sweep_id)
    assert max(reports.values()) == 1, reports
    study = optuna.load_study(study_name=records.study_name(sweep_id), storage=storage(r, sweep_id))
    for t in study.trials:
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1)), (t.number, t.intermediate_values)
        assert sorted(step for (tid, step) in reports if tid == t._trial_id) == list(range(1, epochs + 1))
    assert st["best"]["value"] == study.best_value
