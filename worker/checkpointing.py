"""The checkpointing callback: saves what its :class:`worker.policy.SavePolicy` calls for (every epoch end, step
checkpoints every N batches or ``every_s`` seconds, a preemption's mid-epoch checkpoint), through
:class:`worker.checkpoint.Checkpoints` (background writes, fenced commits, retention by its KeepPolicy).

It runs after :class:`worker.progress.EpochRecorder` at each epoch end and reads that epoch's record (improved,
early stop) for its decision; a requested stop (cancel, preemption) is carried out here at an epoch end, once the
checkpoint it resumes from is committed.

>>> # cb = CheckpointCallback(ckpts, ledger, control, policy, snaps, best, recorder, epochs=10, steps=15)
"""

from __future__ import annotations

import time
from typing import Any

from jobs.contract.events import EventKind, event
from jobs.contract.spec import JobSpec
from jobs.errors import FencedError
from jobs.keras.best_model import BestModel
from jobs.settings import WorkerSettings
from jobs.storage.ckpt_format import ckpt_key
from worker.checkpoint import Checkpoints
from worker.ckpt_interval import IntervalPolicy
from worker.control import Interrupted, JobControl, StopReason
from worker.ledger import AttemptLedger
from worker.policy import EpochFacts, SavePolicy
from worker.progress import BatchCounter, EpochRecorder
from worker.snapshot import Snapshotter

_STOPS = (StopReason.PREEMPT, StopReason.CANCEL)


def save_policy(spec: JobSpec, settings: WorkerSettings, mid_epoch_resume: bool, ledger: AttemptLedger
                ) -> SavePolicy:
    """The job's :class:`SavePolicy`. Step checkpoints (``checkpoint.save_freq`` / ``every_s``; by default every
    ``auto`` seconds: Young/Daly from the measured stall, :class:`worker.ckpt_interval.IntervalPolicy`) need a data
    pipeline that can resume mid-epoch: arrays, and a Dataset on one device (:mod:`worker.data_resume`)."""
    c = spec.checkpoint
    if c.explicit_step_checkpoints and not mid_epoch_resume:
        ledger.note("checkpoint.save_freq/every_s: this Dataset job runs on several devices (MirroredStrategy), "
                    "whose input pipeline cannot resume mid-epoch; it checkpoints at epoch ends only", "warning")
    auto = c.every_s == "auto"
    lo = settings.checkpoint_interval_min_s
    hi = max(settings.checkpoint_interval_max_s, lo)
    interval = IntervalPolicy(settings.checkpoint_mtbf_s, lo, hi) if auto else None
    return SavePolicy(save_freq=c.save_freq, every_s=None if auto else c.every_s,
                      step_checkpoints=c.step_checkpoints and mid_epoch_resume,
                      wait_always=settings.checkpoint_backpressure == "wait", interval=interval)


class CheckpointCallback(BatchCounter):
    """One attempt's checkpointing (one instance for all its fit calls: :meth:`begin_fit` per call).

    ``preempt_key`` is the committed checkpoint a preempted attempt resumes from; ``skipped_epochs`` the epochs
    whose checkpoint was skipped under backpressure.
    """

    def __init__(self, ckpts: Checkpoints, ledger: AttemptLedger, control: JobControl, policy: SavePolicy,
                 snapshots: Snapshotter, best: BestModel, recorder: EpochRecorder, *, epochs: int,
                 steps: int | None, mid_epoch_resume: bool, export_latest: bool) -> None:
        super().__init__()
        self.ckpts, self.ledger, self.control, self.policy = ckpts, ledger, control, policy
        self.snapshots, self.best, self.recorder = snapshots, best, recorder
        self.epochs, self.steps = epochs, steps
        self.mid_epoch_resume = mid_epoch_resume  # traind's own array pipeline can skip the batches already trained
        self.export_latest = export_latest  # not checkpoint.save_best_only: each epoch end is also the lazy "latest"
        self.preempt_key: int | None = None
        self.skipped_epochs: list[int] = []
        self.last_step_save = time.monotonic()
        self.stall_before_s = 0.0  # checkpoint stalls of earlier attempts (the record's ckpt_stall_s at the start)
        self._stalls_seen = 0

    def begin_fit(self, batch_offset: int) -> None:
        self.batch_offset = batch_offset

    # -- step checkpoints ----------------------------------------------------------------------------------------
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """A step checkpoint when ``checkpoint.save_freq`` batches or ``every_s`` seconds call for one: the exact state
        after this batch (weights, optimizer, metric accumulators, callback state), written and committed in the
        background while training goes on; a crashed attempt resumes at the next batch."""
        self.batches_done += 1
        now = time.monotonic()
        if not self.policy.step_due(self.batches_done, self.steps, self.last_step_save, now):
            return
        self.last_step_save = now
        epoch0, done = self.epoch, self.batches_done
        # must: a step checkpoint waits for the previous write (as before), the host copy taken after the wait
        self.ckpts.offer(lambda: self.snapshots.take(self.model, epoch0, done, {}, mid_epoch=True), self.best.key,
                         must=True)
        self._account()

    def _account(self) -> None:
        """Feed the checkpoints' stalls to the save policy (the automatic interval) and publish the job's total
        (``ckpt_stall_s``: goodput's checkpoint part) and the current interval."""
        new = self.ckpts.stall_s[self._stalls_seen:]
        self._stalls_seen = len(self.ckpts.stall_s)
        for s in new:
            self.policy.observe_stall(s)
        if not new:
            return
        fields: dict[str, Any] = {"ckpt_stall_s": round(self.stall_before_s + sum(self.ckpts.stall_s), 4)}
        if self.policy.interval is not None:
            fields["ckpt_interval_s"] = round(self.policy.interval.interval_s(), 2)
        try:
            self.ledger.write(fields=fields)
        except FencedError:
            self.control.request(StopReason.FENCED)

    # -- epoch ends ----------------------------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rec = self.recorder.last
        e = epoch + 1
        if rec is None or rec.epoch != e:  # the epoch was not recorded: nothing to checkpoint against
            return
        reason = self.control.reason
        facts = EpochFacts(e, self.epochs, improved=rec.improved, stopping=rec.stopped_early,
                           stop_requested=reason in _STOPS)
        self.last_step_save = time.monotonic()  # an epoch-end checkpoint restarts checkpoint.every_s
        snap = self.ckpts.offer(lambda: self.snapshots.take(self.model, e, 0, rec.metrics, mid_epoch=False),
                                self.best.key, must=self.policy.must_save(facts),
                                export={"best": rec.improved, "latest": self.export_latest})
        self._account()
        if snap is None:
            self.skipped_epochs.append(e)
            # Backpressure (see Checkpoints.offer): the write of an earlier epoch is still running.
            self.ledger.note(f"epoch {e}: checkpoint skipped, the previous checkpoint is still being written; the next "
                             "epoch end after it lands is checkpointed", epoch=e, skipped_checkpoint=True)
        reason = self.control.reason
        if reason in _STOPS and not rec.stopped_early and e < self.epochs:
            self.ckpts.flush()  # a requeue must point at a committed checkpoint
            if reason is StopReason.PREEMPT:
                self.preempt_key = ckpt_key(e, 0)
            raise Interrupted(reason)

    # -- a stop at a batch boundary ------------------------------------------------------------------------------
    def before_stop(self, epoch0: int, batches_done: int) -> None:
        """A stop was requested at a batch boundary. Preemption saves a mid-epoch checkpoint first."""
        reason = self.control.reason
        if reason is StopReason.FENCED:
            return
        self.ckpts.flush()
        # Mid-epoch resume needs data that can resume at a batch (arrays; a Dataset on one device, whose position
        # is saved with the checkpoint); a multi-device Dataset job resumes from the last epoch end instead.
        if reason is StopReason.PREEMPT and self.mid_epoch_resume and (self.steps is None or batches_done < self.steps):
            snap = self.snapshots.take(self.model, epoch0, batches_done, {}, mid_epoch=True)
            self.ckpts.save(snap, fields={"preempt_key": snap.key},
                            events=[event(EventKind.CHECKPOINT, f"preempted: saved checkpoint at epoch {epoch0 + 1} "
                                          f"batch {batches_done}/{self.steps}", epoch=epoch0 + 1,
                                          batch=batches_done)])
            self.preempt_key = snap.key

