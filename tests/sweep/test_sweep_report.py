"""A trial's worker-side reports (jobs/sweep/reporter.py) against a real Redis, without workers: each epoch reaches
the study once whoever reports it (a resumed attempt redoing an epoch, the controller's backstop), the pruner's
verdict comes back at the epoch's end, the last epoch is never pruned, and a job that is no trial costs one HGET."""

from __future__ import annotations

import math
from typing import Any

import optuna
import redis
from optuna.trial import TrialState

from jobs.sweep import records
from jobs.sweep.reporter import TrialReporter
from jobs.sweep.spec import validate_sweep
from jobs.sweep.study import distributions, open_study, storage
from tests.sweep.conftest import tiny_job
from tests.sweep.test_sweep_fault import _journal_reports

ALLOWED = ["examples", "tests.models"]


def _sweep(r: redis.Redis, pruner: dict[str, Any], epochs: int = 3) -> tuple[str, optuna.Study]:
    """A sweep record and its study with trial 0 finished (loss 0.1 at every epoch) and trial 1 asked."""
    data = {"name": "rep", "job": tiny_job(epochs=epochs), "trials": 4, "parallel": 2, "pruner": pruner,
            "space": {"model.builder_kwargs.units": {"type": "int", "low": 4, "high": 16}}}
    sweep, job = validate_sweep(data, allowed_modules=ALLOWED)
    sid = records.SweepStore(r).create(sweep.model_dump(mode="json"), job.model_dump(mode="json"),
                                       sweep.direction(job), sweep.objective_metric(job))
    study = open_study(r, sid, sweep.direction(job), sweep, epochs)
    t0 = study.ask(distributions(sweep))
    for e in range(1, epochs + 1):
        t0.report(0.1, e)
    study.tell(t0, 0.1)
    study.ask(distributions(sweep))
    return sid, study


def test_reported_once_across_a_resumed_attempt_and_the_controller(r: redis.Redis) -> None:
    sid, study = _sweep(r, {"type": "median", "n_startup_trials": 1})
    first = TrialReporter(r, sid, 1)
    v = first.epoch_end(1, {"val_loss": 0.09})
    assert (v.reported, v.prune) == (True, False)
    # The attempt is killed before its checkpoint; the next one redoes epoch 1 (another value): not reported again.
    again = TrialReporter(r, sid, 1)
    v = again.epoch_end(1, {"val_loss": 0.08})
    assert (v.reported, v.prune) == (False, False)
    # The controller's backstop reports the same step at the same moment (its own storage): the journal keeps one.
    tid = study.trials[1]._trial_id
    storage(r, sid).set_trial_intermediate_value(tid, 1, 0.07)
    assert _journal_reports(r, sid)[(tid, 1)] == 1
    assert optuna.load_study(study_name=records.study_name(sid), storage=storage(r, sid)).trials[1] \
        .intermediate_values == {1: 0.09}


def test_the_pruner_is_asked_at_the_epoch_end_and_the_trial_stays_pruned(r: redis.Redis) -> None:
    sid, _ = _sweep(r, {"type": "median", "n_startup_trials": 1})
    v = TrialReporter(r, sid, 1).epoch_end(1, {"val_loss": 5.0})
    assert (v.epoch, v.reported, v.prune, v.decided) == (1, True, True, True)
    study = optuna.load_study(study_name=records.study_name(sid), storage=storage(r, sid))
    assert study.trials[1].state == TrialState.PRUNED and study.trials[1].last_step == 1
    # A resumed attempt of the pruned trial (killed before it stopped) learns it at its first epoch end: it stops,
    # reports nothing, and did not decide it (no second "pruned at" note).
    v = TrialReporter(r, sid, 1).epoch_end(1, {"val_loss": 0.01})
    assert (v.reported, v.prune, v.decided) == (False, True, False)


def test_last_epoch_and_missing_values_are_never_pruned(r: redis.Redis) -> None:
    sid, _ = _sweep(r, {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 3}, epochs=3)
    rep = TrialReporter(r, sid, 1)
    assert rep.epoch_end(1, {"loss": 1.0}).reported is False  # no val_loss this epoch (validation_freq)
    assert rep.epoch_end(2, {"val_loss": math.nan}).reported is False
    v = rep.epoch_end(3, {"val_loss": 5.0})  # the last epoch: reported, never pruned (the controller completes it)
    assert (v.reported, v.prune) == (True, False)


def test_a_job_that_is_no_trial_is_not_linked(r: redis.Redis) -> None:
    assert records.trial_of(r, "j-none") is None
    records.link_trial(r, "j1", "s0123", 7)
    assert records.trial_of(r, "j1") == ("s0123", 7)
    r.hset(records.TRIAL_JOBS, "j2", "garbage")
    assert records.trial_of(r, "j2") is None  # a malformed link: no trial, never a crash
    records.unlink_trial(r, "j1")
    assert records.trial_of(r, "j1") is None
