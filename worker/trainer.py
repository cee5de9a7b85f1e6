"""Train one claimed attempt of a job: build, resume, fit; the callbacks do the rest, one concern each.

:mod:`worker.build` builds the model and data, :mod:`worker.resume` picks the checkpoint to start from;
``model.fit`` then runs with :mod:`worker.progress`'s callbacks (stop at a batch boundary, progress, each epoch's
record), the resumable EarlyStopping/ReduceLROnPlateau (:class:`worker.callbacks.Plateau`),
:mod:`worker.checkpointing`'s callback and TensorBoard. Everything is written through the attempt's
:class:`worker.ledger.AttemptLedger`. The end of training has one owner, :class:`worker.ending.Ending`: the Trainer
hands it the :class:`worker.ending.Outcome` as soon as training is complete (from inside fit, see
:meth:`Trainer._on_train_end`); the caller (:mod:`worker.attempt`) hands it any other outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import keras
import redis

from jobs.contract.spec import JobSpec
from jobs.errors import CheckpointError, FencedError, TraindError, UserCodeError
from jobs.keras.best_model import BestModel
from jobs.settings import WorkerSettings
from jobs.storage.base import Storage
from worker import build as build_mod
from worker import fit_callbacks, sweep_callback
from worker.callbacks import BestTracker, Plateau, RestoreMetricsCallback
from worker.checkpoint import Checkpoints, Restored, apply_state
from worker.checkpointing import CheckpointCallback, save_policy
from worker.control import Interrupted, JobControl, StopReason
from worker.data_resume import resume_dataset
from worker.ending import Ending, Outcome
from worker.ledger import AttemptLedger, AttemptRecord, Progress
from worker.policy import KeepPolicy
from worker.progress import EpochRecorder, ProgressCallback, StopCallback
from worker.resume import resume
from worker.snapshot import Snapshotter
from worker.tensorboard import TensorBoardLogger

log = logging.getLogger("traind.worker")


class Trainer:
    """One attempt. ``run()`` returns an :class:`Outcome` or raises UserCodeError / FencedError / StorageError."""

    def __init__(self, *, ledger: AttemptLedger, storage: Storage, settings: WorkerSettings, spec: JobSpec,
                 record: AttemptRecord, control: JobControl, ending: Ending,
                 on_progress: Sequence[Callable[[Progress], None]] = (),
                 watch: Callable[[int], keras.callbacks.Callback] | None = None) -> None:
        self.ledger, self.storage, self.settings, self.spec = ledger, storage, settings, spec
        self.record, self.control, self.ending = record, control, ending
        self.on_progress = list(on_progress)  # told of every published Progress (e.g. a progress watchdog)
        self.watch = watch  # batch_offset -> the progress watchdog's callback for one fit call (worker.watchdog)
        self.ckpts = Checkpoints(storage, ledger, KeepPolicy(spec.checkpoint.keep_last))
        self.best = BestModel()
        self.plateau = Plateau(spec)
        self.tensorboard = TensorBoardLogger(ledger, storage)
        self.model: Any = None
        self.recorder: EpochRecorder | None = None
        self.checkpointing: CheckpointCallback | None = None
        self.built: build_mod.Built | None = None
        self.extra_cbs: list[keras.callbacks.Callback] = []

    # -- public --------------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Train until done or stopped; raises UserCodeError / FencedError / StorageError / CheckpointError."""
        try:
            return self._run()
        except Interrupted as i:
            return self._stopped(i.reason)
        finally:
            self.tensorboard.close()
            try:
                self.ckpts.close()
            except FencedError:
                self.control.request(StopReason.FENCED)

    @property
    def epochs_done(self) -> int:
        return 0 if self.recorder is None else self.recorder.epochs_done

    def _run(self) -> Outcome:
        spec = self.spec
        b = build_mod.build(spec, self.storage, self.settings, self.ledger)
        self.model, self.built = b.model, b
        policy = save_policy(spec, self.settings, b.mid_epoch_resume, self.ledger)
        c = spec.checkpoint
        tracker = BestTracker(build_mod.check_monitors(spec, b, self.ledger), c.mode, c.initial_value_threshold)
        snapshots = Snapshotter(tracker, self.plateau, b.data_position)
        self.recorder = EpochRecorder(self.ledger, tracker, self.plateau, self.best)
        self.checkpointing = CheckpointCallback(
            self.ckpts, self.ledger, self.control, policy, snapshots, self.best, self.recorder, epochs=spec.fit.epochs,
            steps=b.steps, mid_epoch_resume=b.mid_epoch_resume, export_latest=not c.save_best_only)
        self.checkpointing.stall_before_s = self.record.ckpt_stall_s

        def restore(r: Restored) -> None:
            apply_state(self.model, r)
            st = r.manifest["state"]
            tracker.set_state(st.get("tracker", {}))
            self.plateau.restore(st, r.weights, r.es_best_weights)

        point = resume(self.ledger, self.ckpts, spec, self.record, b.steps, restore)
        if point.restored is not None:
            self.recorder.epochs_done = point.epoch
            self.best.resumed(tracker.best_epoch, point.index or {})
            resume_dataset(b.resumable, point.restored.data, point.epoch + 1, point.batch, self.ledger)
        self.extra_cbs = fit_callbacks.extra_callbacks(spec, self.storage, self.ledger.job_id, point.epoch,
                                                       self.settings.allowed_modules)
        self.extra_cbs += sweep_callback.for_attempt(self.ledger, self.control)  # a sweep trial: report, prune
        start = point.epoch
        if start >= spec.fit.epochs:
            return self._finish()
        if point.batch:
            self._fit(start, start + 1, skip=point.batch, metric_vars=point.metric_vars)
            start += 1
            if self.recorder.stop_after_epoch or start >= spec.fit.epochs:
                return self._finish()
            self.plateau.carry()
        self._fit(start, spec.fit.epochs)
        return self._finish()

    def _stopped(self, reason: StopReason) -> Outcome:
        if reason is StopReason.CANCEL:
            msg = f"cancelled after epoch {self.epochs_done}; checkpoints kept"
        elif reason is StopReason.PREEMPT:
            msg = f"preempted after epoch {self.epochs_done}"
        else:
            msg = "lease lost: another attempt owns the job"
        key = None if self.checkpointing is None else self.checkpointing.preempt_key
        return Outcome(reason, {}, msg, preempt_key=key, epochs_done=self.epochs_done)

    # -- fit -----------------------------------------------------------------------------------------------------
    def _fit(self, first: int, last: int, skip: int = 0, metric_vars: list[Any] | None = None) -> None:
        b = self.built
        assert b is not None and self.recorder is not None and self.checkpointing is not None
        steps = b.steps if b.data.is_arrays else None
        self.checkpointing.begin_fit(skip)
        cbs: list[Any] = [] if metric_vars is None else [RestoreMetricsCallback(metric_vars)]
        cbs += [] if b.resumable is None else [b.resumable.callback()]  # counts batches before any snapshot
        cbs += [] if self.watch is None else [self.watch(skip)]
        cbs += [StopCallback(self.control, self.checkpointing.before_stop, batch_offset=skip, steps=steps),
                ProgressCallback(self.ledger, self.control, self.settings.progress_interval_s, b.steps,
                                 batch_offset=skip, listeners=self.on_progress)]
        cbs += self.extra_cbs  # user-requested Keras callbacks run before traind's own, as in model.fit
        cbs += self.plateau.callbacks()
        cbs += [self.recorder, self.checkpointing,
                self.tensorboard,  # after the epoch's history is in Redis: it writes what Redis holds
                keras.callbacks.LambdaCallback(on_train_end=lambda logs: self._on_train_end())]  # last of all
        x, kwargs = build_mod.fit_inputs(self.spec, b.data, b.steps, first, last, skip, b.resumable)
        try:
            self.model.fit(x, callbacks=cbs, **kwargs)
        except (Interrupted, TraindError, redis.RedisError):
            raise  # traind's own signals and infrastructure errors: not the user's code
        except Exception as e:
            raise UserCodeError(f"training raised {type(e).__name__}: {e}") from e

    # -- the end -------------------------------------------------------------------------------------------------
    def _on_train_end(self) -> None:
        """Keras' on_train_end: when training is complete, end the job now, before fit() returns.

        fit() then still tears down its input pipeline (a multi-epoch prefetching tf.data iterator, which took
        10-30 s on a loaded machine); the job is ``succeeded`` by then and the worker only tidies up.
        """
        assert self.recorder is not None
        done = self.epochs_done >= self.spec.fit.epochs or self.recorder.stop_after_epoch
        if done and not self.ending.ended:
            self.ending.record(self._finish())

    def _finish(self) -> Outcome:
        """Write the user-facing files (latest, final, best), wait for the last checkpoint, say how training ended."""
        if self.ending.outcome is not None:
            return self.ending.outcome
        # The last epoch's checkpoint may still be writing: the exports below go on beside it (the job's end is
        # not held up by two writes in a row); it is flushed, and its failure raised, before the job succeeds.
        # Only the last epoch's write can be in flight (each epoch end waits for the one before), and when that
        # epoch is the best, the best file comes from the model, not from that checkpoint.
        self.tensorboard.close()  # its files are complete when the job is
        wo = self.spec.checkpoint.save_weights_only
        fields: dict[str, Any] = {"stopped_early": self.plateau.stopped_early}
        self._ensure_owner()
        plan = self.best.end_plan(self.epochs_done, self.spec.checkpoint.save_best_only)
        # The model holds the last epoch's state: export it as latest (and as best when that epoch was the best).
        if plan.latest:
            fields["latest_checkpoint"] = self.ckpts.export(self.model, wo, "latest")
        if plan.best_from_model:
            fields["best_checkpoint"] = self.ckpts.export(self.model, wo, "best")
        msg = "training finished" + self.plateau.restore_best(self.model)
        fields["final_checkpoint"] = self.ckpts.export(self.model, wo, "final")
        if plan.best_from_checkpoint is not None:
            self.ckpts.flush()
            best = self._export_best_from_checkpoint(plan.best_from_checkpoint, wo)
            if best is not None:
                fields["best_checkpoint"] = best
        self.ckpts.flush()
        return Outcome(None, fields, msg, epochs_done=self.epochs_done)

    def _export_best_from_checkpoint(self, key: int, weights_only: bool) -> dict[str, Any] | None:
        """Write ``best`` from the best epoch's verified resumable checkpoint (the model is done training).
        None, keeping the lazy record, when that checkpoint cannot be loaded."""
        m = self.ledger.checkpoints().get(key)
        if m is None:
            return None
        try:
            apply_state(self.model, self.ckpts.load(m))
        except CheckpointError as e:
            self.ledger.note(f"best model file not written: {e}; load_model('best') uses the checkpoint", "warning")
            return None
        return self.ckpts.export(self.model, weights_only, "best")

    def _ensure_owner(self) -> None:
        """Before replacing a job-wide export (best/latest/final model file, one per job, not per attempt): check,
        and renew, this attempt's ownership. Fenced writes to Redis are refused, but a file rename is not: a worker
        frozen past its lease (GC or VM pause, SIGSTOP) would otherwise overwrite the file the current owner
        recorded, and the finished job's model would fail its sha256 check. Raises Interrupted(FENCED)."""
        if self.control.reason is not StopReason.FENCED:
            owner, _ = self.ledger.renew(int(self.settings.lease_ttl_s * 1000))
            if owner:
                return
            self.control.request(StopReason.FENCED)
        raise Interrupted(StopReason.FENCED)
