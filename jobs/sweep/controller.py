"""The sweep controller: one stateless :meth:`SweepController.step` drives every active sweep from Redis.

Each step, for each sweep: keep ``parallel`` trials in flight (each an ordinary traind job, submitted with the
idempotency key ``sweep:<id>:<number>`` so a controller killed mid-submit never makes a second job, and linked to
its trial so that its worker reports to the study); tell the study the final value when the job ends.

The worker of a trial reports each epoch and asks the pruner at the epoch's end, and stops there when pruned
(:mod:`jobs.sweep.reporter`): only it can stop a trial at the epoch the pruner rejects. The controller is the
backstop: it reports every finished epoch the study lacks (from the job's history, in order, exactly once: the
journal says which epochs it already has, and keeps one report per step whoever writes it), asks the pruner and,
when it says so, tells the study and cancels the job (shown as *pruned*); a trial its worker pruned is recorded as
pruned from the study.

Nothing lives only in memory: a controller that restarts (or another supervisor's controller taking over after its
lease lapsed) reads the study and the jobs and carries on. Only one controller drives sweeps at a time: the
lease ``traind:sweeps:controller`` (renewed each step) decides which.

>>> # ctl = SweepController(r, client, owner="host-123"); ctl.step().reported   # {(sweep_id, trial): [epochs]}
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import redis
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from jobs.client import Client
from jobs.contract.events import EventKind
from jobs.contract.spec import JobSpec, validate_spec
from jobs.contract.states import JobState
from jobs.errors import JobNotFoundError, SpecError
from jobs.sweep import records
from jobs.sweep.records import CONTROLLER_LEASE, SweepRecord, SweepStore, TrialRecord
from jobs.sweep.spec import SweepSpec, trial_spec
from jobs.sweep.study import distributions, open_study

log = logging.getLogger("traind.sweep")
_ERROR_LOG_S = 60.0  # the same error of one sweep is logged at most this often

# Take the lease when free, renew it when ours; 1 = we drive the sweeps now.
_LEASE = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


@dataclass
class ControllerReport:
    """What one step did (for logs and tests)."""

    leader: bool = False
    submitted: list[tuple[str, int]] = field(default_factory=list)
    reported: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    pruned: list[tuple[str, int]] = field(default_factory=list)
    finished: list[tuple[str, int, str]] = field(default_factory=list)
    sweeps_finished: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Open:
    study: optuna.Study
    sweep: SweepSpec
    job: JobSpec


class SweepController:
    """Drives the active sweeps of one Redis database; safe to run in every supervisor (one leads)."""

    def __init__(self, r: redis.Redis, client: Client, owner: str, lease_ttl_ms: int = 10_000) -> None:
        self.r = r
        self.client = client
        self.store = client.store
        self.sweeps = SweepStore(r)
        self.owner = owner
        self.lease_ttl_ms = int(lease_ttl_ms)
        self._lease = r.register_script(_LEASE)
        self._open: dict[str, _Open] = {}
        self._logged: dict[str, tuple[str, float]] = {}  # sweep -> (last error logged, when)

    def step(self, now_ms: int | None = None) -> ControllerReport:
        """One pass over every active sweep (Redis clock ``now_ms``; read from Redis when None)."""
        rep = ControllerReport()
        active = self.sweeps.active()
        if not active:
            return rep
        if not int(self._lease(keys=[CONTROLLER_LEASE], args=[self.owner, self.lease_ttl_ms])):
            self._open.clear()  # another controller leads: re-read everything when we lead
            return rep
        rep.leader = True
        now = self.sweeps.now_ms() if now_ms is None else int(now_ms)
        for sweep_id in active:
            try:
                self._drive(sweep_id, now, rep)
            except (redis.ConnectionError, redis.TimeoutError):
                raise  # the caller's loop backs off; the next step starts again from Redis
            except Exception as e:  # one broken sweep must not stop the others
                msg = f"{type(e).__name__}: {e}"
                last = self._logged.get(sweep_id)
                if last is None or last[0] != msg or time.monotonic() - last[1] > _ERROR_LOG_S:  # not every pass
                    self._logged[sweep_id] = (msg, time.monotonic())
                    log.exception("sweep %s: step failed", sweep_id)
                rep.errors.append(f"{sweep_id}: {msg}")
        return rep

    # -- one sweep -------------------------------------------------------------------------------------------------
    def _drive(self, sweep_id: str, now: int, rep: ControllerReport) -> None:
        try:
            rec = self.sweeps.get(sweep_id)
            op = self._opened(rec)
        except (ValueError, SpecError, JobNotFoundError) as e:  # a malformed record: that sweep fails, visibly
            log.error("sweep %s: %s; marked failed", sweep_id, e)
            if self.r.exists(records.sweep_key(sweep_id)):
                self.sweeps.finish(sweep_id, records.FAILED, str(e)[:500])
            else:
                self.r.srem(records.ACTIVE, sweep_id)
            return
        if rec.state != records.RUNNING:
            self.r.srem(records.ACTIVE, sweep_id)
            return
        trials, _bad = self.sweeps.trials(sweep_id)
        frozen = {t.number: t for t in op.study.get_trials(deepcopy=False)}
        if rec.cancel_requested:
            self._cancel_sweep(rec, op, frozen, trials, now)
            rep.sweeps_finished.append(sweep_id)
            return
        in_flight = 0
        for number, ft in sorted(frozen.items()):
            tr = trials.get(number) or TrialRecord(number=number, params=dict(ft.params))
            if ft.state != TrialState.RUNNING:
                self._reconcile(rec, ft, tr, now)
                continue
            if tr.job is None:  # asked, but the controller stopped before the job was recorded
                self._submit(rec, op, tr, rep)
            if tr.job is not None and self._advance(rec, op, ft, tr, now, rep):
                in_flight += 1
        count = len(frozen)
        dists = distributions(op.sweep)
        while in_flight < rec.parallel and count < rec.trials_total:
            trial = op.study.ask(dists)
            tr = TrialRecord(number=trial.number, params=dict(trial.params))
            self.sweeps.put_trial(sweep_id, tr)  # params first: visible while its job is being created
            self._submit(rec, op, tr, rep)
            in_flight += tr.job is not None
            count += 1
        if count >= rec.trials_total and in_flight == 0:
            done, _ = self.sweeps.trials(sweep_id)
            ok = any(t.state == "succeeded" for t in done.values())
            self.sweeps.finish(sweep_id, records.SUCCEEDED if ok else records.FAILED,
                               None if ok else "no trial succeeded")
            self._open.pop(sweep_id, None)
            rep.sweeps_finished.append(sweep_id)
            log.info("sweep %s (%s) finished: %s", sweep_id, rec.name, "succeeded" if ok else "failed")

    def _opened(self, rec: SweepRecord) -> _Open:
        op = self._open.get(rec.id)
        if op is None:
            sweep = SweepSpec.model_validate(rec.sweep)
            job = validate_spec(rec.job)  # validated (with the submitter's allowlist) at submit; re-checked by workers
            study = open_study(self.r, rec.id, rec.direction, sweep, job.fit.epochs)
            op = self._open[rec.id] = _Open(study, sweep, job)
        return op

    def _submit(self, rec: SweepRecord, op: _Open, tr: TrialRecord, rep: ControllerReport) -> None:
        data = trial_spec(op.job, tr.params, f"{rec.name}-t{tr.number}")
        try:
            spec = validate_spec(data)
        except SpecError as e:  # a value inside the range the job spec refuses: this trial fails, the sweep goes on
            op.study.tell(tr.number, state=TrialState.FAIL, skip_if_finished=True)
            self._record_end(rec, tr, "failed", self.sweeps.now_ms(), f"trial spec refused: {'; '.join(e.problems)}")
            return
        # The sweep's submitter's allowlist already approved every value of the space; workers check again.
        # A trial is its sweep's owner's job (fair share, limits, who may cancel it), not the controller's host user.
        handle = self.client._submit(spec, client_key=f"sweep:{rec.id}:{tr.number}", owner=rec.owner)
        tr.job = handle.id
        records.link_trial(self.r, handle.id, rec.id, tr.number)  # before the trial record: its worker reports
        self.sweeps.put_trial(rec.id, tr)
        self.store.add_event(handle.id, EventKind.NOTE, f"trial {tr.number} of sweep {rec.id} ({rec.name})",
                             sweep=rec.id, trial=tr.number)
        rep.submitted.append((rec.id, tr.number))

    def _advance(self, rec: SweepRecord, op: _Open, ft: optuna.trial.FrozenTrial, tr: TrialRecord, now: int,
                 rep: ControllerReport) -> bool:
        """Report new epochs, prune or finish; True while the trial is still in flight."""
        assert tr.job is not None
        try:
            st = self.store.get(tr.job, with_history=True, with_goodput=False)  # every pass: only history is read
        except JobNotFoundError:
            self._end(rec, op, tr, TrialState.FAIL, "failed", now, rep, error=f"job {tr.job} disappeared")
            return False
        trial = optuna.Trial(op.study, ft._trial_id)
        key = (rec.id, tr.number)
        reported = dict(ft.intermediate_values)
        last = op.job.fit.epochs  # the last epoch is never pruned (as by the worker): the trial completes
        new = sorted((h for h in st.get("history") or [] if isinstance(h, dict) and isinstance(h.get("epoch"), int)
                      and h["epoch"] not in reported), key=lambda h: h["epoch"])
        seen = tr.reported
        tr.reported = max(tr.reported, max(reported, default=0))  # the worker's own reports count as reported
        for h in new:
            v = h.get(rec.metric)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                continue  # an epoch without the metric (validation_freq) or a NaN: nothing to report
            trial.report(float(v), h["epoch"])
            reported[h["epoch"]] = float(v)
            tr.reported = h["epoch"]
            rep.reported.setdefault(key, []).append(h["epoch"])
            # Only the epochs it reported itself (its worker could not): the worker asks the pruner after every
            # epoch, including one this controller reported and then died before judging.
            if h["epoch"] < last and trial.should_prune():
                self._prune(rec, op, tr, h["epoch"], reported, now, rep)
                return False
        state = JobState(st["state"])
        if not state.is_terminal:
            if tr.reported != seen:
                self.sweeps.put_trial(rec.id, tr)
            return True
        values = [h.get(rec.metric) for h in st.get("history") or [] if isinstance(h, dict)]
        values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if state is JobState.SUCCEEDED and values:
            tr.value = max(values) if rec.direction == "maximize" else min(values)
            self._end(rec, op, tr, TrialState.COMPLETE, "succeeded", now, rep)
        elif state is JobState.SUCCEEDED:
            self._end(rec, op, tr, TrialState.FAIL, "failed", now, rep,
                      error=f"the job never logged the objective {rec.metric!r}")
        elif state is JobState.CANCELLED:
            self._end(rec, op, tr, TrialState.FAIL, "cancelled", now, rep, error="its job was cancelled")
        else:
            self._end(rec, op, tr, TrialState.FAIL, "failed", now, rep, error=str(st.get("error") or "job failed"))
        return False

    def _prune(self, rec: SweepRecord, op: _Open, tr: TrialRecord, epoch: int, reported: dict[int, float], now: int,
               rep: ControllerReport) -> None:
        vals = list(reported.values())
        tr.value = max(vals) if rec.direction == "maximize" else min(vals)
        tr.pruned_at = epoch
        if self._end(rec, op, tr, TrialState.PRUNED, "pruned", now, rep):
            rep.pruned.append((rec.id, tr.number))
            log.info("sweep %s: trial %d pruned after epoch %d (job %s; its worker did not stop it: cancelled)",
                     rec.id, tr.number, epoch, tr.job)

    def _end(self, rec: SweepRecord, op: _Open, tr: TrialRecord, state: TrialState, shown: str, now: int,
             rep: ControllerReport, error: str | None = None) -> bool:
        """Tell the study first (the record of truth), then stop the job if needed, then record the trial. False
        when the study already had the trial's end (its worker pruned it meanwhile): that end is recorded instead."""
        try:
            op.study.tell(tr.number, tr.value if state == TrialState.COMPLETE else None, state=state,
                          skip_if_finished=True)
        except UpdateFinishedTrialError:
            pass  # the worker's end came first: the journal keeps one end per trial
        ended = op.study._storage.get_trial(op.study._storage.get_trial_id_from_study_id_trial_number(
            op.study._study_id, tr.number))
        if ended.state != state:
            self._reconcile(rec, ended, tr, now)
            rep.finished.append((rec.id, tr.number, tr.state))
            return False
        self._record_end(rec, tr, shown, now, error, note=state == TrialState.PRUNED)
        rep.finished.append((rec.id, tr.number, shown))
        return True

    def _record_end(self, rec: SweepRecord, tr: TrialRecord, shown: str, now: int, error: str | None,
                    note: bool = False) -> None:
        if tr.job:
            records.unlink_trial(self.r, tr.job)
        if shown in ("pruned", "cancelled") and tr.job:
            # A finished job keeps its state (a trial its worker pruned is cancelled already); a running one stops
            # at its next batch boundary.
            self.store.request_cancel(tr.job)
            if note:
                self.store.add_event(tr.job, EventKind.NOTE, f"pruned by sweep {rec.id} after epoch {tr.pruned_at}",
                                     sweep=rec.id, trial=tr.number, pruned_at=tr.pruned_at)
        tr.state, tr.error, tr.finished_at = shown, error, now
        self.sweeps.put_trial(rec.id, tr)

    def _reconcile(self, rec: SweepRecord, ft: optuna.trial.FrozenTrial, tr: TrialRecord, now: int) -> None:
        """The study says the trial ended but the record does not (the controller stopped in between): catch up."""
        if tr.state in records.TRIAL_DONE:
            return
        if ft.state == TrialState.COMPLETE:
            tr.value = ft.value
            self._record_end(rec, tr, "succeeded", now, None)
        elif ft.state == TrialState.PRUNED:  # pruned by its worker (or by this controller before it stopped)
            vals = [v for v in ft.intermediate_values.values() if math.isfinite(v)]
            tr.pruned_at = ft.last_step if ft.last_step is not None else tr.pruned_at
            tr.reported = max(tr.reported, ft.last_step or 0)
            if vals:
                tr.value = max(vals) if rec.direction == "maximize" else min(vals)
            self._record_end(rec, tr, "pruned", now, None)
        else:
            self._record_end(rec, tr, "cancelled" if rec.cancel_requested else "failed", now, tr.error)

    def _cancel_sweep(self, rec: SweepRecord, op: _Open, frozen: dict[int, optuna.trial.FrozenTrial],
                      trials: dict[int, TrialRecord], now: int) -> None:
        for number, ft in sorted(frozen.items()):
            tr = trials.get(number) or TrialRecord(number=number, params=dict(ft.params))
            if ft.state == TrialState.RUNNING:
                op.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            self._reconcile(rec, op.study.trials[number] if ft.state == TrialState.RUNNING else ft, tr, now)
        self.sweeps.finish(rec.id, records.CANCELLED, "cancelled by request")
        self._open.pop(rec.id, None)
        log.info("sweep %s (%s) cancelled", rec.id, rec.name)


def controller_status(r: redis.Redis) -> dict[str, Any]:
    """Who drives sweeps now (the lease holder) and for how much longer."""
    owner = r.get(CONTROLLER_LEASE)
    return {"owner": owner.decode(errors="replace") if owner else None, "ttl_ms": int(r.pttl(CONTROLLER_LEASE))}
