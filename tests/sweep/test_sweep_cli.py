"""Sweep files and commands without workers: every problem of a bad file at once, submit/list/status/cancel, and the
controller's bookkeeping (in-process, real Redis, no TensorFlow: no trial trains here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.sweep import records
from jobs.sweep.controller import SweepController
from jobs.sweep.spec import trial_spec, validate_sweep
from jobs.sweep.study import storage
from testkit.cluster import free_port
from tests.conftest import ROOT, Procs, log_of, wait_for
from tests.sweep.conftest import sweep_file, tiny_job

ALLOWED = ["examples", "tests.models"]


def test_bad_sweep_file_lists_every_problem_and_creates_nothing(cli: Any, tmp_path: Path, r: redis.Redis) -> None:
    bad = {
        "name": "bad",
        "job": {**tiny_job(), "fit": {"epochs": 3, "batchsize": 32}},  # a problem of the job spec itself
        "objectiv": {"metric": "val_loss"},  # unknown field
        "space": {
            "model.builder_kwargs.lr": {"type": "float", "low": 0.001, "high": 0.1},  # not in the job spec
            "model.builder_kwargs.units": {"type": "int", "low": 64, "high": 4},  # bad range
            "model.builder_kwargs.learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True},
        },
        "sampler": "annealing",
        "trials": 0,
    }
    rc, out, err = cli("sweep", "submit", str(sweep_file(tmp_path, bad)))
    assert rc == 2 and out == ""
    assert "sweep spec refused (7 problem(s)); nothing was submitted" in err, err
    for expected in [
        "objectiv: unknown field; did you mean 'objective'?",
        "trials: Input should be greater than or equal to 1",
        "sampler.type: Input should be 'random', 'grid' or 'tpe'",
        "space.model.builder_kwargs.units: low (64) must be below high (4)",
        "space.model.builder_kwargs.learning_rate: log: true needs low > 0",
        "job: fit.batchsize: unknown field; did you mean 'batch_size'?",
        "space.model.builder_kwargs.lr: not a field of the job spec",
    ]:
        assert expected in err, (expected, err)
    assert r.zcard(records.SWEEPS) == 0 and r.zcard(keys.JOBS_INDEX) == 0


def test_range_ends_the_job_spec_refuses_are_problems_too(tmp_path: Path) -> None:
    from jobs.errors import SpecError

    data = {"name": "s", "job": tiny_job(), "trials": 5, "sampler": "grid",
            "space": {"fit.batch_size": {"type": "int", "low": 0, "high": 64, "step": 32},
                      "model.builder": {"type": "categorical", "choices": ["os:system"]}}}
    with pytest.raises(SpecError) as e:
        validate_sweep(data, allowed_modules=ALLOWED)
    text = "\n".join(e.value.problems)
    assert "space.fit.batch_size: the value 0 makes the job spec invalid: fit.batch_size" in text
    assert "space.model.builder: the value 'os:system' makes the job spec invalid: model.builder: module 'os'" in text
    assert "trials: 5 exceeds the grid's 3 points" in text


def test_trial_spec_sets_params_and_resumes_from_latest() -> None:
    sweep, job = validate_sweep({"name": "s", "job": {**tiny_job(), "resume_from": "best"}, "trials": 2,
                                 "space": {"fit.batch_size": {"type": "categorical", "choices": [16, 64]}}})
    spec = trial_spec(job, {"fit.batch_size": 64}, "s-t1")
    assert (spec["fit"]["batch_size"], spec["name"], spec["resume_from"]) == (64, "s-t1", "latest")
    assert sweep.direction(job) == "minimize" and sweep.objective_metric(job) == "val_loss"


def _submit(cli: Any, tmp_path: Path, **over: Any) -> str:
    data = {"name": "cli-sweep", "job": tiny_job(), "trials": 3, "parallel": 2,
            "space": {"model.builder_kwargs.units": {"type": "int", "low": 4, "high": 16}}, **over}
    rc, out, err = cli("sweep", "submit", str(sweep_file(tmp_path, data)), "--json")
    assert rc == 0, err
    return json.loads(out)["id"]


def test_controller_keeps_parallel_trials_in_flight_and_cancel_ends_them(
        cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    sweep_id = _submit(cli, tmp_path)
    client = Client(redis_url=redis_url, storage=storage_dir)
    ctl = SweepController(r, client, owner="test-a")
    rep = ctl.step()
    assert rep.leader and rep.submitted == [(sweep_id, 0), (sweep_id, 1)]  # `parallel` of them, no more
    assert ctl.step().submitted == []  # both still queued: nothing new
    # A second controller (another supervisor) does nothing while the first holds the lease.
    assert not SweepController(r, client, owner="test-b").step().leader

    rc, out, _ = cli("sweep", "status", sweep_id[:6], "--json")
    st = json.loads(out)
    assert rc == 0 and st["id"] == sweep_id and st["name"] == "cli-sweep" and st["state"] == "running"
    assert [(t["number"], t["state"], t["epochs_done"], t["restarts"], t["pruned"]) for t in st["trials"]] == [
        (0, "queued", 0, 0, False), (1, "queued", 0, 0, False)]
    jobs = [t["job"] for t in st["trials"]]
    for t in st["trials"]:
        assert 4 <= t["params"]["model.builder_kwargs.units"] <= 16 and t["value"] is None
        assert client.store.get(t["job"])["spec"]["model"]["builder_kwargs"]["units"] == \
            t["params"]["model.builder_kwargs.units"]
    assert st["best"] is None
    rc, out, _ = cli("sweep", "list")
    assert rc == 0 and sweep_id in out and "0/3" in out

    rc, out, _ = cli("sweep", "cancel", sweep_id)
    assert rc == 0 and "cancel requested" in out
    ctl.step()
    st = json.loads(cli("sweep", "status", sweep_id, "--json")[1])
    assert st["state"] == "cancelled" and [t["state"] for t in st["trials"]] == ["cancelled", "cancelled"]
    assert [client.store.get(j)["state"] for j in jobs] == ["cancelled", "cancelled"]
    study = optuna.load_study(study_name=records.study_name(sweep_id), storage=storage(r, sweep_id))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    rc, out, _ = cli("sweep", "cancel", sweep_id)
    assert rc == 0 and "already cancelled" in out


def test_controller_restarted_between_ask_and_submit_makes_one_job(
        cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    """The controller died after asking the study for a trial but before its job was recorded (or even after the
    job was created): the next controller submits it under the same idempotency key - one job per trial."""
    sweep_id = _submit(cli, tmp_path, parallel=1)
    client = Client(redis_url=redis_url, storage=storage_dir)
    first = SweepController(r, client, owner="first")
    first.step()
    job0 = json.loads(cli("sweep", "status", sweep_id, "--json")[1])["trials"][0]["job"]
    r.hdel(records.sweep_key(sweep_id, "trials"), "0")  # as if it died between creating the job and recording it
    r.delete(records.CONTROLLER_LEASE)  # its lease lapsed
    SweepController(r, client, owner="second").step()
    st = json.loads(cli("sweep", "status", sweep_id, "--json")[1])
    assert [(t["number"], t["job"]) for t in st["trials"]] == [(0, job0)]
    assert r.zcard(keys.JOBS_INDEX) == 1


def test_malformed_trial_record_is_one_bad_row(cli: Any, tmp_path: Path, r: redis.Redis) -> None:
    sweep_id = _submit(cli, tmp_path)
    r.hset(records.sweep_key(sweep_id, "trials"), "7", b"\xff{not json")
    rc, out, err = cli("sweep", "status", sweep_id, "--json")
    st = json.loads(out)
    assert rc == 0 and st["trials"] == [] and len(st["bad_records"]) == 1
    rc, out, err = cli("sweep", "status", sweep_id)
    assert rc == 0 and "trial 7: malformed record" in err


def test_example_sweep_file_is_valid() -> None:
    from jobs.sweep.spec import load_sweep_file

    sweep, job = load_sweep_file(ROOT / "examples" / "sweep.yaml", allowed_modules=["examples"])
    assert (sweep.trials, sweep.parallel, sweep.pruner.type, job.name) == (20, 4, "hyperband", "regression-early-stop")


def test_optuna_dashboard_opens_the_study(cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path,
                                          r: redis.Redis, procs: Procs) -> None:
    """`traind sweep dashboard` serves optuna-dashboard on the sweep's study (its REST API lists it)."""
    sweep_id = _submit(cli, tmp_path)
    SweepController(r, Client(redis_url=redis_url, storage=storage_dir), owner="test").step()
    port = free_port()
    p = procs.traind("sweep", "dashboard", sweep_id[:7], "--port", str(port), "--redis-url", redis_url,
                     name="dashboard")

    def studies() -> list[Any] | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=5).json()["study_summaries"]
        except (httpx.HTTPError, ValueError):
            assert p.poll() is None, log_of(p)
            return None

    listed = wait_for(studies, 60, "optuna-dashboard to answer")
    assert [s["study_name"] for s in listed] == [records.study_name(sweep_id)]


def test_malformed_sweep_record_fails_that_sweep_only(cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path,
                                                      r: redis.Redis) -> None:
    broken, fine = _submit(cli, tmp_path), _submit(cli, tmp_path)
    r.hset(records.sweep_key(broken), "sweep", "{not json")
    rep = SweepController(r, Client(redis_url=redis_url, storage=storage_dir), owner="test").step()
    assert rep.submitted == [(fine, 0), (fine, 1)] and rep.errors == []
    assert r.hget(records.sweep_key(broken), "state") == b"failed"
    assert b"malformed record" in r.hget(records.sweep_key(broken), "error")
    assert records.SweepStore(r).active() == [fine]
    rc, out, _ = cli("sweep", "list", "--json")
    assert rc == 0 and {s["id"]: s["state"] for s in json.loads(out)} == {broken: "malformed", fine: "running"}
