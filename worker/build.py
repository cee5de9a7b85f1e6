"""Building an attempt: seeds, the distribution strategy, the model (variables created eagerly), the data, and the
check that every monitor names a metric the model logs on that data.

>>> # b = build(spec, storage, settings, ledger); monitor = check_monitors(spec, b, ledger)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from jobs.contract.spec import JobSpec, monitors
from jobs.errors import UserCodeError
from jobs.keras import fitcheck, fitdata
from jobs.keras.modelio import build_model
from jobs.settings import WorkerSettings
from jobs.storage.base import Storage
from worker import data as data_mod
from worker import distribute
from worker.data_resume import ResumableDataset
from worker.ledger import AttemptLedger


@dataclass
class Built:
    """The attempt's model (under ``strategy``), its data and its epoch length (None: until the data ends)."""

    model: Any
    data: data_mod.TrainData
    steps: int | None
    strategy: Any
    resumable: ResumableDataset | None = None  # a Dataset's iterators, owned so that it resumes mid-epoch

    @property
    def mid_epoch_resume(self) -> bool:
        """Whether this data can resume at a batch: arrays (traind's pipeline) or a Dataset on one device."""
        return self.data.is_arrays or self.resumable is not None

    def data_position(self, mid_epoch: bool) -> bytes | None:
        """A Dataset's position for a checkpoint (:mod:`worker.data_resume`); None for arrays."""
        if self.resumable is None:
            return None
        return self.resumable.position(pass_done=not mid_epoch and self.steps is None).to_bytes()


def build(spec: JobSpec, storage: Storage, settings: WorkerSettings, ledger: AttemptLedger) -> Built:
    keras.utils.set_random_seed(spec.fit.seed)
    if spec.fit.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    allowed = settings.allowed_modules
    strategy = distribute.strategy_for(spec)
    if spec.resources.gpus > 1:
        devices = list(strategy.extended.worker_devices)
        ledger.note(f"MirroredStrategy on {len(devices)} devices: {', '.join(devices)}", devices=devices)
    with strategy.scope():  # variables created under it are mirrored on resources.gpus devices
        model = build_model(spec, storage, allowed, settings.max_upload_bytes)
    data = data_mod.load(spec, storage, allowed, settings.max_upload_bytes)
    if data.is_arrays:
        steps: int | None = data.steps_per_epoch(spec.fit.batch_size, spec.fit.steps_per_epoch)
        x1, y1 = fitdata.take(data.x, slice(0, 1)), fitdata.take(data.y, slice(0, 1))
        with strategy.scope():
            if not model.built:
                model(x1)
            _create_variables_eagerly(model, x1, y1)
        return Built(model, data, steps, strategy)
    # A Dataset on one device: fit takes its iterators from traind (position saved with every checkpoint).
    # MirroredStrategy iterates a rebatched copy of it instead: such a job resumes at epoch ends.
    resumable = None if spec.resources.gpus > 1 else ResumableDataset(data.dataset, class_weight=spec.fit.class_weight)
    return Built(model, data, spec.fit.steps_per_epoch, strategy, resumable)


def check_monitors(spec: JobSpec, b: Built, ledger: AttemptLedger) -> str:
    """The checkpoint monitor to track. Every monitor must name a metric this model logs on this data: fail now,
    with "did you mean", rather than after an epoch (client.fit checked these at submit; a loader's data is first
    seen here). Without validation data, the default checkpoint monitor val_loss becomes loss (an event)."""
    mon = spec.checkpoint.monitor
    if spec.data.loader is None:
        return mon
    data = b.data
    try:
        if data.is_arrays:
            x1, y1 = fitdata.take(data.x, slice(0, 2)), fitdata.take(data.y, slice(0, 2))
            sw1 = None if data.sw is None else fitdata.take(data.sw, slice(0, 2))
        else:
            el = next(iter(data.dataset.take(1)))
            x1, y1, sw1 = (tuple(el) + (None, None))[:3] if isinstance(el, tuple) else (el, None, None)
        names = fitcheck.probe_metrics(b.model, x1, y1, sw1)
    except Exception as e:
        raise UserCodeError(f"the model cannot evaluate the loader's data: {type(e).__name__}: {e}") from e
    has_val = data.validation is not None
    mons = monitors(spec)
    if not has_val and mon == "val_loss":
        mons.pop("checkpoint.monitor")
        mon = "loss"
        ledger.note("no validation data: the checkpoint monitors loss instead of the default val_loss", "warning")
    problems = fitcheck.monitor_problems(mons, names, has_val)
    if problems:
        raise UserCodeError("; ".join(problems))
    return mon


def fit_inputs(spec: JobSpec, data: data_mod.TrainData, steps: int | None, first: int, last: int, skip: int,
               resumable: ResumableDataset | None = None) -> tuple[Any, dict[str, Any]]:
    """``model.fit``'s input and keyword arguments (callbacks aside) for epochs ``first``..``last`` (0-based, end
    excluded), the first ``skip`` batches of a partial first epoch left out (a Dataset's ``resumable`` was brought
    to that batch by :meth:`worker.data_resume.ResumableDataset.resume`)."""
    kwargs: dict[str, Any] = {"initial_epoch": first, "epochs": last, "verbose": 0,
                              "shuffle": False,  # arrays are shuffled per epoch by traind's own pipeline
                              "validation_freq": spec.fit.validation_freq}
    if spec.fit.class_weight:
        kwargs["class_weight"] = dict(spec.fit.class_weight)
    if spec.fit.validation_steps:
        kwargs["validation_steps"] = spec.fit.validation_steps
    if data.is_arrays:
        assert steps is not None
        x = data_mod.epoch_dataset(data, spec.fit.batch_size, spec.fit.shuffle, spec.fit.seed, first, last,
                                   skip_batches=skip, steps=steps, initial_epoch=spec.fit.initial_epoch)
        kwargs["steps_per_epoch"] = steps - skip if last == first + 1 and skip else steps
        if skip and last != first + 1:
            raise AssertionError("a partial epoch is fitted on its own")
    elif resumable is not None:
        x = resumable.for_fit()
        kwargs.pop("class_weight", None)  # applied by the ResumableDataset (Keras would iterate a mapped copy)
        if skip and last != first + 1:
            raise AssertionError("a partial epoch is fitted on its own")
        per_epoch = steps or (_cardinality(data.dataset) if skip else None)
        if per_epoch:  # a partial epoch of unknown length runs until the data runs out
            kwargs["steps_per_epoch"] = per_epoch - skip if skip else per_epoch
    else:
        x = data.dataset
        if steps:
            kwargs["steps_per_epoch"] = steps
    if data.validation is not None:
        kwargs["validation_data"] = data.validation
        if data.is_arrays:
            kwargs["validation_batch_size"] = spec.fit.validation_batch_size or spec.fit.batch_size
    return x, kwargs


def _cardinality(ds: Any) -> int | None:
    """Batches in one pass of a Dataset, None when unknown or infinite."""
    try:
        n = int(ds.cardinality())
    except Exception:  # noqa: BLE001 - a Dataset-like object without cardinality
        return None
    return n if n > 0 else None


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
