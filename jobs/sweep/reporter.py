"""A trial's epochs reported by the worker that trains it, at each epoch's end, and the pruner asked there and then.

Why in the worker: the controller runs once per supervisor pass and a cancel reaches a worker at its next heartbeat,
so a trial pruned from there trains on past the epoch the pruner rejected (and may even finish). The worker instead
reports the epoch's value to the study (Optuna's journal in Redis), asks the pruner synchronously and, when told to,
tells the study the trial is pruned and stops at this epoch's end (:mod:`worker.sweep_callback`). The controller
still reports, prunes and cancels from the job's history: a backstop for a worker that could not (Redis blip).

Exactly once: an epoch already in the study (reported by the controller, or by an earlier attempt of this job that
was killed before its checkpoint) is not reported again, and the journal itself keeps one report per trial and step
(:func:`jobs.sweep.study.once_name`). The last epoch is reported but never pruned (nothing left to save): the
controller completes the trial when the job ends.

>>> # rep = TrialReporter(r, "s019ab...", 3)
>>> # rep.epoch_end(2, {"val_loss": 0.41})   # Verdict(..., epoch=2, reported=True, prune=False, decided=False)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import redis
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from jobs.sweep import records
from jobs.sweep.spec import SweepSpec
from jobs.sweep.study import pruner, storage


@dataclass(frozen=True)
class Verdict:
    """What one epoch end did: ``prune`` says stop training now; ``decided``: this call pruned the trial (False when
    it was pruned before, e.g. by this job's earlier attempt or by the controller)."""

    sweep_id: str
    number: int
    epoch: int
    reported: bool
    prune: bool
    decided: bool = False


class TrialReporter:
    """Reports the epochs of trial ``number`` of sweep ``sweep_id`` to its study (opened once, kept in sync)."""

    def __init__(self, r: redis.Redis, sweep_id: str, number: int) -> None:
        rec = records.SweepStore(r).get(sweep_id)
        sweep = SweepSpec.model_validate(rec.sweep)
        self.sweep_id, self.number = sweep_id, int(number)
        self.metric = rec.metric
        # The pruner's resource is the sweep's job spec's epochs (the controller's too), whatever a trial's own.
        self.epochs = int(rec.job["fit"]["epochs"])
        # The sampler is never used here (the controller samples): RandomSampler costs nothing to build.
        self.study = optuna.load_study(study_name=records.study_name(sweep_id), storage=storage(r, sweep_id),
                                       sampler=optuna.samplers.RandomSampler(), pruner=pruner(sweep.pruner,
                                                                                            self.epochs))
        self.trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, self.number)

    def epoch_end(self, epoch: int, logs: Mapping[str, Any]) -> Verdict:
        """Report epoch ``epoch`` (1-based) with ``logs``' objective and ask the pruner; see :class:`Verdict`."""
        ft = self.study._storage.get_trial(self.trial_id)
        if ft.state == TrialState.PRUNED:
            return Verdict(self.sweep_id, self.number, epoch, reported=False, prune=True)
        if ft.state.is_finished():  # completed, or failed by a cancelled sweep (whose controller cancels the job)
            return Verdict(self.sweep_id, self.number, epoch, reported=False, prune=False)
        value = logs.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return Verdict(self.sweep_id, self.number, epoch, reported=False, prune=False)  # validation_freq, NaN
        reported = False
        trial = optuna.Trial(self.study, self.trial_id)
        if epoch not in ft.intermediate_values:
            try:
                trial.report(float(value), epoch)
                reported = True
            except UpdateFinishedTrialError:  # ended by the controller meanwhile: judge from what it recorded
                return self._after_end(epoch)
        if epoch >= self.epochs or not trial.should_prune():
            return Verdict(self.sweep_id, self.number, epoch, reported=reported, prune=False)
        try:
            self.study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)
        except UpdateFinishedTrialError:
            pass
        ended = self.study._storage.get_trial(self.trial_id)
        if ended.state != TrialState.PRUNED:  # the controller ended it first (e.g. a cancelled sweep)
            return Verdict(self.sweep_id, self.number, epoch, reported=reported, prune=False)
        return Verdict(self.sweep_id, self.number, epoch, reported=reported, prune=True,
                       decided=ended.last_step == epoch)

    def _after_end(self, epoch: int) -> Verdict:
        ft = self.study._storage.get_trial(self.trial_id)
        return Verdict(self.sweep_id, self.number, epoch, reported=False, prune=ft.state == TrialState.PRUNED)
