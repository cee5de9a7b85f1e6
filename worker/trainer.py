"""Train one claimed attempt of a job: build, load data, resume, fit, checkpoint every epoch.

The caller (:mod:`worker.attempt`) owns the claim, the heartbeat and the final state transition; ``Trainer.run``
tells it how training ended with a complete :class:`Outcome`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import redis

from jobs.contract.events import EventKind, event
from jobs.contract.spec import JobSpec, monitors
from jobs.errors import CheckpointError, FencedError, TraindError, UserCodeError
from jobs.keras import fitcheck, fitdata
from jobs.keras.modelio import build_model
from jobs.redis.store import JobStore
from jobs.settings import WorkerSettings
from jobs.storage.base import Storage
from jobs.storage.ckpt_format import ckpt_key
from worker import data as data_mod
from worker import distribute, fit_callbacks
from worker.callbacks import (
    BestTracker,
    ControlCallback,
    EpochEndCallback,
    RestoreMetricsCallback,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    clean_logs,
)
from worker.checkpoint import Checkpoints, Restored, Snapshot
from worker.control import Interrupted, JobControl, StopReason
from worker.tensorboard import TensorBoardLogger

log = logging.getLogger("traind.worker")


@dataclass
class Outcome:
    """How the attempt ended: ``reason`` None when training finished (the job succeeded), else why it stopped.

    ``fields`` and ``event`` go into the final transition; ``preempt_key`` is the committed checkpoint a
    preempted attempt resumes from (None when it stopped at an epoch end and resumes from the latest one).
    """

    reason: StopReason | None
    fields: dict[str, Any] = field(default_factory=dict)
    event: str = ""
    preempt_key: int | None = None
    epochs_done: int = 0


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.6g}"


class Trainer:
    """One attempt. ``run()`` returns an :class:`Outcome` or raises UserCodeError / FencedError / StorageError."""

    def __init__(self, *, store: JobStore, storage: Storage, settings: WorkerSettings, job_id: str, attempt: int,
                 token: str, spec: JobSpec, record: dict[str, Any], control: JobControl,
                 on_finished: Callable[[Outcome], None] | None = None) -> None:
        self.store, self.storage, self.settings = store, storage, settings
        self.job_id, self.attempt, self.token, self.spec = job_id, attempt, token, spec
        self.record, self.control = record, control
        self.ckpts = Checkpoints(storage, store, job_id, attempt, token, keep_last=spec.checkpoint.keep_last)
        self.model: Any = None
        self.es: ResumableEarlyStopping | None = None
        self.rlrop: ResumableReduceLROnPlateau | None = None
        self.tracker = BestTracker(spec.checkpoint.monitor, spec.checkpoint.mode,
                                   spec.checkpoint.initial_value_threshold)
        self.steps: int | None = None
        self.epoch_started = time.monotonic()
        self.preempt_key: int | None = None
        self.best_key: int | None = None  # index key of the checkpoint-monitor's best epoch
        self.stop_after_epoch = False
        self.arrays = True
        self.epochs_done = 0
        self.extra_cbs: list[Any] = []
        self.skipped_epochs: list[int] = []  # epochs whose checkpoint was skipped under backpressure
        self.outcome: Outcome | None = None  # set when training finished inside fit (see _on_train_end)
        self.on_finished = on_finished
        self.step_ckpts = False  # checkpoint.save_freq / every_s, with traind's own (array) pipeline
        self.last_step_save = time.monotonic()
        self.tensorboard = TensorBoardLogger(store, storage, job_id, attempt)
        self.host = HostBuffers()

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

    def _run(self) -> Outcome:
        spec = self.spec
        keras.utils.set_random_seed(spec.fit.seed)
        if spec.fit.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        allowed = self.settings.allowed_modules
        self.strategy = distribute.strategy_for(spec)
        if spec.resources.gpus > 1:
            devices = list(self.strategy.extended.worker_devices)
            self.store.fenced_update(self.job_id, self.token, events=[event(
                EventKind.NOTE, f"MirroredStrategy on {len(devices)} devices: {', '.join(devices)}",
                devices=devices)])
        with self.strategy.scope():  # variables created under it are mirrored on resources.gpus devices
            self.model = build_model(spec, self.storage, allowed, self.settings.max_upload_bytes)
        data = data_mod.load(spec, self.storage, allowed, self.settings.max_upload_bytes)
        self.arrays = data.is_arrays
        if data.is_arrays:
            self.steps = data.steps_per_epoch(spec.fit.batch_size, spec.fit.steps_per_epoch)
            x1, y1 = fitdata.take(data.x, slice(0, 1)), fitdata.take(data.y, slice(0, 1))
            with self.strategy.scope():
                if not self.model.built:
                    self.model(x1)
                _create_variables_eagerly(self.model, x1, y1)
        else:
            self.steps = spec.fit.steps_per_epoch
        self.step_ckpts = spec.checkpoint.step_checkpoints and data.is_arrays
        if spec.checkpoint.step_checkpoints and not data.is_arrays:
            self.store.fenced_update(self.job_id, self.token, events=[event(
                EventKind.NOTE, "checkpoint.save_freq/every_s: step checkpoints need array data (traind's own pipeline "
                "can skip the batches already trained); this Dataset job checkpoints at epoch ends only", "warning")])
        if spec.data.loader is not None:
            self._check_monitors(data)  # client.fit checked these at submit; a loader's data is first seen here
        if spec.early_stopping:
            self.es = ResumableEarlyStopping(**spec.early_stopping.model_dump())
        if spec.lr_on_plateau:
            self.rlrop = ResumableReduceLROnPlateau(**spec.lr_on_plateau.model_dump())

        start_epoch, start_batch, metric_vars = self._resume()
        self.extra_cbs = fit_callbacks.extra_callbacks(spec, self.storage, self.job_id, start_epoch, allowed)
        if start_epoch >= spec.fit.epochs:
            return self._finish()
        if start_batch:
            self._fit(data, start_epoch, start_epoch + 1, skip=start_batch, metric_vars=metric_vars)
            start_epoch += 1
            if self.stop_after_epoch or start_epoch >= spec.fit.epochs:
                return self._finish()
            self._carry_callback_state()
        self._fit(data, start_epoch, spec.fit.epochs)
        return self._finish()

    def _stopped(self, reason: StopReason) -> Outcome:
        if reason is StopReason.CANCEL:
            msg = f"cancelled after epoch {self.epochs_done}; checkpoints kept"
        elif reason is StopReason.PREEMPT:
            msg = f"preempted after epoch {self.epochs_done}"
        else:
            msg = "lease lost: another attempt owns the job"
        return Outcome(reason, {}, msg, preempt_key=self.preempt_key, epochs_done=self.epochs_done)

    # -- resume --------------------------------------------------------------------------------------------------
    def _resume(self) -> tuple[int, int, list[np.ndarray] | None]:
        index = self.store.checkpoints(self.job_id)
        self.ckpts.clear_incomplete()
        rec = self.record
        best_key = _int(rec.get("best_ckpt_key"))
        preempt_key = _int(rec.get("preempt_key"))
        # Step checkpoints exist to lose at most their interval: a crashed attempt resumes from the newest one.
        policy = "latest" if self.spec.checkpoint.step_checkpoints else self.spec.resume_from
        restored, events = self.ckpts.select(index, policy, best_key, preempt_key)
        start_epoch, start_batch, metric_vars = self.spec.fit.initial_epoch, 0, None
        if restored is not None:
            self._restore(restored)
            start_epoch, start_batch = restored.manifest["epoch"], restored.manifest["batch"]
            metric_vars = restored.metric_vars
            self.epochs_done = start_epoch
            be = self.tracker.best_epoch
            self.best_key = ckpt_key(be, 0) if be and ckpt_key(be, 0) in index else None
        resume_key = ckpt_key(start_epoch, start_batch)
        # Epochs after the resume point will be redone: their history entries and checkpoints are replaced.
        hist_del = [h["epoch"] for h in self.store.history(self.job_id) if h["epoch"] > start_epoch]
        stale = [k for k in index if k > resume_key or restored is None]
        fields: dict[str, Any] = {"epoch": start_epoch, "resume_epoch": start_epoch, "preempt_key": None,
                                  "batch": start_batch, "steps": self.steps or 0}
        if restored is None:
            fields.update({"best_epoch": None, "best_value": None, "best_ckpt_key": None})
        events.append(event(EventKind.TRAINING, f"attempt {self.attempt} training on worker {rec.get('worker')} from "
                            f"epoch {start_epoch + 1}/{self.spec.fit.epochs}"
                            + (f" batch {start_batch + 1}/{self.steps}" if start_batch else ""),
                            attempt=self.attempt, worker=rec.get("worker"), epoch=start_epoch + 1,
                            batch=start_batch + 1 if start_batch else 0))
        self.store.fenced_update(self.job_id, self.token, fields=fields, history_del=hist_del, ckpt_del=stale,
                                 events=events)
        self.ckpts.delete_files([index[k] for k in stale])
        return start_epoch, start_batch, metric_vars

    def _restore(self, r: Restored) -> None:
        self._load_state(r)
        st = r.manifest["state"]
        self.tracker.set_state(st.get("tracker", {}))
        if self.es is not None and "es" in st:
            best_w = r.es_best_weights if r.es_best_weights is not None else (
                list(r.weights) if st.get("es_best_is_current") else None)
            self.es.set_state(st["es"], best_w)
        if self.rlrop is not None and "rlrop" in st:
            self.rlrop.set_state(st["rlrop"])

    def _carry_callback_state(self) -> None:
        """Between two fit calls (after a partial epoch), keep callback state: fit's on_train_begin resets it."""
        if self.es is not None:
            self.es.set_state(self.es.get_state(), self.es.best_weights)
        if self.rlrop is not None:
            self.rlrop.set_state(self.rlrop.get_state())

    # -- fit -----------------------------------------------------------------------------------------------------
    def _fit(self, data: data_mod.TrainData, first: int, last: int, skip: int = 0,
             metric_vars: list[np.ndarray] | None = None) -> None:
        spec = self.spec
        cbs: list[Any] = []
        if metric_vars is not None:
            cbs.append(RestoreMetricsCallback(metric_vars))
        cbs.append(ControlCallback(self.control, self._on_stop, self._on_progress,
                                   self.settings.progress_interval_s, batch_offset=skip,
                                   steps=self.steps if data.is_arrays else None))
        if self.step_ckpts:
            cbs.append(fit_callbacks.StepCheckpointCallback(self._on_batch, batch_offset=skip))
        cbs += self.extra_cbs  # user-requested Keras callbacks run before traind's own, as in model.fit
        cbs += [cb for cb in (self.es, self.rlrop) if cb is not None]
        cbs.append(EpochEndCallback(self._on_epoch_end))
        cbs.append(self.tensorboard)  # after the epoch's history is in Redis: it writes what Redis holds
        cbs.append(keras.callbacks.LambdaCallback(on_train_end=lambda logs: self._on_train_end()))  # last of all
        kwargs: dict[str, Any] = {"initial_epoch": first, "epochs": last, "callbacks": cbs, "verbose": 0,
                                  "shuffle": False,  # arrays are shuffled per epoch by traind's own pipeline
                                  "validation_freq": spec.fit.validation_freq}
        if spec.fit.class_weight:
            kwargs["class_weight"] = dict(spec.fit.class_weight)
        if spec.fit.validation_steps:
            kwargs["validation_steps"] = spec.fit.validation_steps
        if data.is_arrays:
            assert self.steps is not None
            x = data_mod.epoch_dataset(data, spec.fit.batch_size, spec.fit.shuffle, spec.fit.seed, first, last,
                                       skip_batches=skip, steps=self.steps, initial_epoch=spec.fit.initial_epoch)
            kwargs["steps_per_epoch"] = self.steps - skip if last == first + 1 and skip else self.steps
            if skip and last != first + 1:
                raise AssertionError("a partial epoch is fitted on its own")
        else:
            x = data.dataset
            if self.steps:
                kwargs["steps_per_epoch"] = self.steps
        if data.validation is not None:
            kwargs["validation_data"] = data.validation
            if data.is_arrays:
                kwargs["validation_batch_size"] = spec.fit.validation_batch_size or spec.fit.batch_size
        self.epoch_started = time.monotonic()
        try:
            self.model.fit(x, **kwargs)
        except (Interrupted, TraindError, redis.RedisError):
            raise  # traind's own signals and infrastructure errors: not the user's code
        except Exception as e:
            raise UserCodeError(f"training raised {type(e).__name__}: {e}") from e

    def _check_monitors(self, data: data_mod.TrainData) -> None:
        """Every monitor must name a metric this model logs on this data: fail now, with "did you mean", rather than
        after an epoch. Without validation data, the default checkpoint monitor val_loss becomes loss (an event)."""
        spec = self.spec
        try:
            if data.is_arrays:
                x1, y1 = fitdata.take(data.x, slice(0, 2)), fitdata.take(data.y, slice(0, 2))
                sw1 = None if data.sw is None else fitdata.take(data.sw, slice(0, 2))
            else:
                el = next(iter(data.dataset.take(1)))
                x1, y1, sw1 = (tuple(el) + (None, None))[:3] if isinstance(el, tuple) else (el, None, None)
            names = fitcheck.probe_metrics(self.model, x1, y1, sw1)
        except Exception as e:
            raise UserCodeError(f"the model cannot evaluate the loader's data: {type(e).__name__}: {e}") from e
        has_val = data.validation is not None
        mons = monitors(spec)
        mon = spec.checkpoint.monitor
        if not has_val and mon == "val_loss":
            mons.pop("checkpoint.monitor")
            self.tracker = BestTracker("loss", spec.checkpoint.mode, spec.checkpoint.initial_value_threshold)
            self.store.fenced_update(self.job_id, self.token, events=[event(
                EventKind.NOTE, "no validation data: the checkpoint monitors loss instead of the default val_loss",
                "warning")])
        problems = fitcheck.monitor_problems(mons, names, has_val)
        if problems:
            raise UserCodeError("; ".join(problems))

    def _state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"tracker": self.tracker.get_state()}
        if self.es is not None:
            st["es"] = self.es.get_state()
        if self.rlrop is not None:
            st["rlrop"] = self.rlrop.get_state()
        st["learning_rate"] = _lr(self.model)
        return st

    def _snapshot(self, epoch: int, batch: int, metrics: dict[str, Any], mid_epoch: bool) -> Snapshot:
        model = self.model
        # Into the reused host buffers: the previous snapshot's write is done (Checkpoints.offer waits for it first)
        weights = self.host.copy("w", model.weights)
        optimizer = self.host.copy("o", model.optimizer.variables)
        state = self._state()
        es_best = None
        if self.es is not None and self.es.best_weights is not None:
            if self.es.best_epoch + 1 == epoch and not mid_epoch:
                state["es_best_is_current"] = True  # don't store the same weights twice
            else:
                es_best = self.es.best_weights
        return Snapshot(
            epoch=epoch, batch=batch, weights=weights,
            optimizer=optimizer, state=state, metrics=metrics, es_best_weights=es_best,
            metric_vars=[v.numpy() for v in model.metrics_variables] if mid_epoch else None,
        )

    def _on_epoch_end(self, epoch0: int, logs: dict[str, Any]) -> None:
        e = epoch0 + 1
        self.epochs_done = e
        metrics = clean_logs(logs)
        metrics.setdefault("learning_rate", _lr(self.model))
        spec = self.spec
        improved, prev, cur = self.tracker.observe(self.model, e, logs)
        events: list[dict[str, Any]] = []
        fields: dict[str, Any] = {"epoch": e, "metrics": metrics, "batch": 0}
        mon = self.tracker.monitor
        # No export on the training thread: the best (and latest) model is the epoch's resumable checkpoint,
        # recorded as a lazy export when its background write commits; files are written when the job finishes.
        if improved:
            fields.update({"best_epoch": e, "best_value": cur})
            frm = "" if prev is None else f" from {_fmt(prev)}"
            events.append(event(EventKind.EPOCH, f"epoch {e}: {mon} improved{frm} to {_fmt(cur)}; checkpointing "
                                "it as the best model", epoch=e, improved=True))
        elif cur is None:
            events.append(event(EventKind.EPOCH, f"epoch {e}: {mon} not in logs ({', '.join(sorted(logs))}); not "
                                "compared", "warning", epoch=e, improved=False))
        else:
            events.append(event(EventKind.EPOCH, f"epoch {e}: {mon} did not improve from {_fmt(prev)} ({_fmt(cur)})",
                                epoch=e, improved=False))
        if self.rlrop is not None:
            old_lr = metrics.get("learning_rate")
            new_lr = _lr(self.model)
            if old_lr is not None and new_lr is not None and new_lr < old_lr * (1 - 1e-6):
                events.append(event(EventKind.LR_REDUCED, f"epoch {e}: learning rate reduced from {_fmt(old_lr)} to "
                                    f"{_fmt(new_lr)}", epoch=e))
        stopping = self.es is not None and self.es.stopped_epoch == epoch0 and epoch0 > 0 and self.model.stop_training
        if stopping:
            self.stop_after_epoch = True
            fields["stopped_early"] = True
            events.append(event(EventKind.EARLY_STOP, f"early stop at epoch {e} (best {self.es.monitor} "
                                f"{_fmt(_f(self.es.best))} at epoch {self.es.best_epoch + 1})", epoch=e))
        entry = {"epoch": e, **metrics, "time_s": round(time.monotonic() - self.epoch_started, 4)}
        self.epoch_started = time.monotonic()
        self.store.fenced_update(self.job_id, self.token, fields=fields, history_set={e: entry}, events=events)

        reason = self.control.reason
        must = (improved or stopping or e >= spec.fit.epochs or reason in (StopReason.PREEMPT, StopReason.CANCEL)
                or self.settings.checkpoint_backpressure == "wait")
        self.last_step_save = time.monotonic()  # an epoch-end checkpoint restarts checkpoint.every_s
        if improved:
            self.best_key = ckpt_key(e, 0)
        snap = self.ckpts.offer(lambda: self._snapshot(e, 0, metrics, mid_epoch=False), self.best_key, must=must,
                                export={"best": improved, "latest": not spec.checkpoint.save_best_only})
        if snap is None:
            self.skipped_epochs.append(e)
            # Backpressure (see Checkpoints.offer): the write of an earlier epoch is still running.
            self.store.fenced_update(self.job_id, self.token, events=[event(
                EventKind.NOTE, f"epoch {e}: checkpoint skipped, the previous checkpoint is still being written; "
                "the next epoch end after it lands is checkpointed", epoch=e, skipped_checkpoint=True)])
        reason = self.control.reason
        if reason in (StopReason.PREEMPT, StopReason.CANCEL) and not stopping and e < spec.fit.epochs:
            self.ckpts.flush()  # a requeue must point at a committed checkpoint
            if reason is StopReason.PREEMPT:
                self.preempt_key = ckpt_key(e, 0)
            raise Interrupted(reason)

    def _on_stop(self, epoch0: int, batches_done: int) -> None:
        """A stop was requested at a batch boundary. Preemption saves a mid-epoch checkpoint first."""
        reason = self.control.reason
        if reason is StopReason.FENCED:
            return
        self.ckpts.flush()
        # Mid-epoch resume needs traind's own per-epoch pipeline (it can skip the batches already trained);
        # a user Dataset resumes from the last epoch end instead.
        if reason is StopReason.PREEMPT and self.arrays and self.steps and batches_done < self.steps:
            snap = self._snapshot(epoch0, batches_done, {}, mid_epoch=True)
            self.ckpts.save(snap, fields={"preempt_key": snap.key},
                            events=[event(EventKind.CHECKPOINT, f"preempted: saved checkpoint at epoch {epoch0 + 1} "
                                          f"batch {batches_done}/{self.steps}", epoch=epoch0 + 1,
                                          batch=batches_done)])
            self.preempt_key = snap.key

    def _on_batch(self, epoch0: int, batches_done: int, now: float) -> None:
        """A step checkpoint when ``checkpoint.save_freq`` batches or ``every_s`` seconds call for one: the exact state
        after this batch (weights, optimizer, metric accumulators, callback state), written and committed in the
        background while training goes on; a crashed attempt resumes at the next batch."""
        c = self.spec.checkpoint
        if not fit_callbacks.step_due(c.save_freq, c.every_s, batches_done, self.steps, self.last_step_save, now):
            return
        self.last_step_save = now
        # must: a step checkpoint waits for the previous write (as before), the host copy taken after the wait
        self.ckpts.offer(lambda: self._snapshot(epoch0, batches_done, {}, mid_epoch=True), self.best_key, must=True)

    def _on_progress(self, epoch0: int, batches_done: int, logs: dict[str, Any]) -> None:
        try:
            self.store.fenced_update(self.job_id, self.token, fields={
                "batch": batches_done, "steps": self.steps or 0, "running_epoch": epoch0 + 1,
                "batch_metrics": clean_logs(logs)})
        except FencedError:
            self.control.request(StopReason.FENCED)

    def _ensure_owner(self) -> None:
        """Before replacing a job-wide export (best/latest/final model file, one per job, not per attempt): check,
        and renew, this attempt's ownership. Fenced writes to Redis are refused, but a file rename is not: a worker
        frozen past its lease (GC or VM pause, SIGSTOP) would otherwise overwrite the file the current owner
        recorded, and the finished job's model would fail its sha256 check. Raises Interrupted(FENCED)."""
        if self.control.reason is not StopReason.FENCED:
            owner, _ = self.store.heartbeat(self.job_id, self.token, int(self.settings.lease_ttl_s * 1000))
            if owner:
                return
            self.control.request(StopReason.FENCED)
        raise Interrupted(StopReason.FENCED)

    def _on_train_end(self) -> None:
        """Keras' on_train_end: when training is complete, finish the job now, before fit() returns.

        fit() then still tears down its input pipeline (a multi-epoch prefetching tf.data iterator, which took
        10-30 s on a loaded machine); the job is ``succeeded`` by then and the worker only tidies up.
        """
        done = self.epochs_done >= self.spec.fit.epochs or self.stop_after_epoch
        if done and self.outcome is None:
            self.outcome = self._finish()
            if self.on_finished is not None:
                self.on_finished(self.outcome)

    def _finish(self) -> Outcome:
        """Write the user-facing files (latest, final, best), wait for the last checkpoint, say how training ended."""
        if self.outcome is not None:
            return self.outcome
        # The last epoch's checkpoint may still be writing: the exports below go on beside it (the job's end is
        # not held up by two writes in a row); it is flushed, and its failure raised, before the job succeeds.
        # Only the last epoch's write can be in flight (each epoch end waits for the one before), and when that
        # epoch is the best, the best file comes from the model, not from that checkpoint.
        self.tensorboard.close()  # its files are complete when the job is
        wo = self.spec.checkpoint.save_weights_only
        fields: dict[str, Any] = {"stopped_early": bool(self.es is not None and self.es.stopped_epoch > 0)}
        msg = "training finished"
        self._ensure_owner()
        # The model holds the last epoch's state: export it as latest (and as best when that epoch was the best).
        best_now = self.best_key is not None and self.best_key == ckpt_key(self.epochs_done, 0)
        if not self.spec.checkpoint.save_best_only:
            fields["latest_checkpoint"] = self.ckpts.export(self.model, wo, "latest")
        if best_now:
            fields["best_checkpoint"] = self.ckpts.export(self.model, wo, "best")
        if self.es is not None and self.es.restore_best_weights and self.es.best_weights is not None:
            self.model.set_weights(self.es.best_weights)
            msg += f"; restored weights of best epoch {self.es.best_epoch + 1}"
        fields["final_checkpoint"] = self.ckpts.export(self.model, wo, "final")
        if self.best_key is not None and not best_now:
            self.ckpts.flush()
            best = self._export_best_from_checkpoint(self.best_key, wo)
            if best is not None:
                fields["best_checkpoint"] = best
        self.ckpts.flush()
        return Outcome(None, fields, msg, epochs_done=self.epochs_done)

    def _export_best_from_checkpoint(self, key: int, weights_only: bool) -> dict[str, Any] | None:
        """Write ``best`` from the best epoch's verified resumable checkpoint (the model is done training).
        None, keeping the lazy record, when that checkpoint cannot be loaded."""
        m = self.store.checkpoints(self.job_id).get(key)
        if m is None:
            return None
        try:
            self._load_state(self.ckpts.load(m))
        except CheckpointError as e:
            self.store.fenced_update(self.job_id, self.token, events=[event(
                EventKind.NOTE, f"best model file not written: {e}; load_model('best') uses the checkpoint",
                "warning")])
            return None
        return self.ckpts.export(self.model, weights_only, "best")

    def _load_state(self, r: Restored) -> None:
        model = self.model
        try:
            model.set_weights(r.weights)
            opt = model.optimizer
            if not opt.built:
                opt.build(model.trainable_variables)
            if len(opt.variables) != len(r.optimizer):
                raise CheckpointError(f"optimizer has {len(opt.variables)} variables, checkpoint {len(r.optimizer)}")
            for v, a in zip(opt.variables, r.optimizer):
                v.assign(a)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {r.manifest['file']} does not fit the model: {e}") from e


def host_copy(model: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The bare device-to-host copy of the resumable state into fresh arrays, as ``model.get_weights()`` makes it:
    (weights, optimizer variables). The benchmarks' reference for :class:`HostBuffers`."""
    return model.get_weights(), [v.numpy() for v in model.optimizer.variables]


class HostBuffers:
    """Host arrays reused from one snapshot to the next: the only checkpoint work on the training thread is one copy
    of each variable into memory that is already mapped.

    A fresh copy (``get_weights()``) allocates the whole state again each time, and on a VM first-touching that
    memory costs more than the copy (here 5-7 s for 300 MB against 0.13-0.23 s into warm buffers). At most one
    snapshot is in flight (:meth:`worker.checkpoint.Checkpoints.offer` waits for the previous write before the next
    copy), so one set of buffers suffices: one host copy of the state per job, held for its life.
    """

    def __init__(self) -> None:
        self._pool: dict[tuple[str, int], np.ndarray] = {}

    def copy(self, group: str, variables: Any) -> list[np.ndarray]:
        out = []
        for i, v in enumerate(variables):
            buf = self._pool.get((group, i))
            shape, dtype = tuple(v.shape), np.dtype(v.dtype)
            if buf is None or buf.shape != shape or buf.dtype != dtype:
                buf = self._pool[(group, i)] = np.empty(shape, dtype)
            np.copyto(buf, _host_view(v))
            out.append(buf)
        return out


def _host_view(v: Any) -> Any:
    """The variable's current value without an extra copy where possible: a DLPack view of a CPU tensor (one copy,
    into the buffer, follows); from a GPU, the device-to-host copy itself."""
    value = getattr(v, "value", v)
    try:
        import tensorflow as tf

        t = tf.convert_to_tensor(value)
        if "GPU" not in (t.device or "").upper():
            return np.from_dlpack(t)
        return t.numpy()
    except Exception:  # noqa: BLE001 - another backend or an older TensorFlow: the plain copy
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


def _create_variables_eagerly(model: Any, x1: Any, y1: Any) -> None:
    """Create the optimizer's and the compiled metrics' variables now, outside ``tf.function``.

    Created lazily inside the first traced train step instead, every such variable leaves ``tf.cond`` branch
    functions in TensorFlow's process-wide function library that ``clear_session()`` never removes: a long-lived
    worker grew ~4 MB per job (bench/memory.py). Best effort: on any error Keras creates them lazily as before.
    """
    try:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.compute_metrics(x1, y1, model(x1), sample_weight=None)
        model.reset_metrics()
    except Exception:  # an optimisation only; fit() reports real problems with the model
        pass


def _lr(model: Any) -> float | None:
    try:
        return float(np.asarray(model.optimizer.learning_rate))
    except (TypeError, ValueError, AttributeError):
        return None


def _f(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _int(v: Any) -> int | None:
    if v in (None, "", "None"):
        return None
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None
