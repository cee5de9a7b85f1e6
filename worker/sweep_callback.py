"""The Keras callback of a job that is a sweep's trial: each epoch's report to the study and the pruner's verdict,
at the epoch's end; a pruned trial stops right there (:mod:`jobs.sweep.reporter` says why and how).

It runs before traind's epoch-end callbacks: the epoch is still recorded, then :class:`worker.checkpointing.
CheckpointCallback` commits its checkpoint and ends the attempt as *cancelled* (checkpoints kept), as for a cancel
requested at that epoch's end. Any other job pays one ``HGET`` per epoch (is it a trial?), and Optuna is imported
only by a trial's worker. A failure here never fails the job: the controller reports and prunes too. The CPU this
takes (the training thread's, Optuna's import included) is added up per trial in ``sweep:<id>:report_cpu``: the
workers' share of what driving a sweep costs (bench/sweep.py).

>>> # cbs += sweep_callback.for_attempt(ledger, control)   # [] for a ledger without Redis
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import keras

from jobs.errors import FencedError
from jobs.sweep.records import sweep_key, trial_of
from worker.control import JobControl, StopReason
from worker.ledger import AttemptLedger

if TYPE_CHECKING:
    import redis

    from jobs.sweep.reporter import TrialReporter

log = logging.getLogger("traind.worker")
_WARN_EVERY_S = 60.0


class SweepTrialCallback(keras.callbacks.Callback):
    """Reports each finished epoch of trial jobs; requests the stop when the pruner says so."""

    def __init__(self, r: redis.Redis, ledger: AttemptLedger, control: JobControl) -> None:
        super().__init__()
        self.r, self.ledger, self.control = r, ledger, control
        self.reporter: TrialReporter | None = None
        self._warned = 0.0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.control.reason is not None:  # stopping already (cancel, preemption, fenced): nothing to add
            return
        cpu0 = time.thread_time()
        try:
            if self.reporter is None:
                link = trial_of(self.r, self.ledger.job_id)
                if link is None:
                    return
                from jobs.sweep.reporter import TrialReporter

                self.reporter = TrialReporter(self.r, *link)
            v = self.reporter.epoch_end(epoch + 1, logs or {})
            self.r.hincrbyfloat(sweep_key(v.sweep_id, "report_cpu"), str(v.number), time.thread_time() - cpu0)
        except Exception as e:  # the controller's backstop reports and prunes from the job's history
            if time.monotonic() - self._warned > _WARN_EVERY_S:
                self._warned = time.monotonic()
                log.warning("job %s: sweep report of epoch %d failed (%s: %s); the sweep controller reports it",
                            self.ledger.job_id, epoch + 1, type(e).__name__, e)
            return
        if not v.prune:
            return
        extra: dict[str, Any] = {"sweep": v.sweep_id, "trial": v.number}
        if v.decided:
            extra["pruned_at"] = v.epoch
        try:
            self.ledger.note(f"pruned by sweep {v.sweep_id} after epoch {v.epoch} (trial {v.number}): training stops "
                             "at this epoch's end", **extra)
        except FencedError:
            self.control.request(StopReason.FENCED)
            return
        self.control.request(StopReason.CANCEL)


def for_attempt(ledger: AttemptLedger, control: JobControl) -> list[keras.callbacks.Callback]:
    """The callback for an attempt whose ledger is in Redis (a trial is only ever a Redis job); else none."""
    store = getattr(ledger, "store", None)
    r = getattr(store, "r", None)
    return [] if r is None else [SweepTrialCallback(r, ledger, control)]
