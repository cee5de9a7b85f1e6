"""Training data for a job: loader call or uploaded arrays, Keras' validation_split, and a per-epoch
deterministic shuffle so that epoch ``e`` sees the same order whether or not the run was resumed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.contract.refs import resolve_ref
from jobs.contract.spec import JobSpec
from jobs.errors import UserCodeError
from jobs.keras import datasets, fitdata
from jobs.storage.base import Storage


@dataclass
class TrainData:
    """Arrays (``x``/``y``/``sw``, optional validation; each an array or a dict/list of arrays for multi-input/-output
    models) or a Dataset (``dataset``/``val_dataset``)."""

    x: Any = None
    y: Any = None
    x_val: Any = None
    y_val: Any = None
    dataset: Any = None
    val_dataset: Any = None
    sw: Any = None
    sw_val: Any = None

    @property
    def is_arrays(self) -> bool:
        return self.dataset is None

    @property
    def validation(self) -> Any:
        if self.val_dataset is not None:
            return self.val_dataset
        if self.x_val is not None:
            return (self.x_val, self.y_val) if self.sw_val is None else (self.x_val, self.y_val, self.sw_val)
        return None

    def __len__(self) -> int:
        return fitdata.num_samples(self.x)

    def steps_per_epoch(self, batch_size: int, requested: int | None = None) -> int:
        """Batches per epoch. With Keras' ``steps_per_epoch`` below the batches in the data, an epoch takes the next
        ``requested`` batches of one pass over the data (Keras continues its iterator across epochs); traind needs
        every epoch to have the same length, so the batches must split evenly into such epochs."""
        batches = math.ceil(len(self) / batch_size)
        if requested is None or requested >= batches:
            return batches
        if batches % requested:
            raise UserCodeError(
                f"fit.steps_per_epoch={requested}: the data has {batches} batches of {batch_size}, which do not split "
                f"into epochs of {requested} batches (Keras would end every {math.ceil(batches / requested)}th epoch "
                "early); choose a divisor of the batch count, or a Dataset")
        return requested


def load(spec: JobSpec, storage: Storage, allowed: Sequence[str], max_upload_bytes: int | None = None) -> TrainData:
    """Call the loader (UserCodeError if it raises) or load uploaded arrays (allow_pickle=False)."""
    d = spec.data
    if d.arrays:
        a = fitdata.unpack(storage.get_arrays(d.arrays, max_bytes=max_upload_bytes))
        data = TrainData(a["x"], a["y"], sw=a["sample_weight"])
    elif d.dataset:
        data = TrainData(dataset=datasets.load_dataset(storage, d.dataset, max_upload_bytes))
    else:
        assert d.loader is not None
        fn = resolve_ref(d.loader, allowed, "data.loader")
        try:
            out = fn(**d.loader_kwargs)
        except Exception as e:
            raise UserCodeError(f"data.loader {d.loader} raised {type(e).__name__}: {e}") from e
        data = _from_loader_output(out, d.loader)
    if d.validation_arrays:
        v = fitdata.unpack(storage.get_arrays(d.validation_arrays, max_bytes=max_upload_bytes))
        data.x_val, data.y_val, data.sw_val = v["x"], v["y"], v["sample_weight"]
    elif d.validation_dataset:
        data.val_dataset = datasets.load_dataset(storage, d.validation_dataset, max_upload_bytes)
    if data.is_arrays:
        if data.x is None or data.y is None or fitdata.num_samples(data.x) != fitdata.num_samples(data.y):
            raise UserCodeError("data: expected arrays x and y of equal length")
        if spec.fit.validation_split and data.x_val is None:
            data = _split(data, spec.fit.validation_split)
    elif spec.fit.validation_split:
        raise UserCodeError("fit.validation_split works with arrays only; return (train_ds, val_ds) from the loader")
    return data


def _from_loader_output(out: Any, ref: str) -> TrainData:
    if _is_dataset(out):
        return TrainData(dataset=out)
    if isinstance(out, dict):
        return TrainData(out.get("x"), out.get("y"), out.get("x_val"), out.get("y_val"))
    if isinstance(out, (tuple, list)):
        if len(out) == 2 and _is_dataset(out[0]):
            return TrainData(dataset=out[0], val_dataset=out[1])
        if len(out) == 2:
            return TrainData(np.asarray(out[0]), np.asarray(out[1]))
        if len(out) == 4:
            return TrainData(*(np.asarray(a) for a in out))
    raise UserCodeError(
        f"data.loader {ref} returned {type(out).__name__}; expected (x, y), (x, y, x_val, y_val), "
        "a tf.data.Dataset or (train_ds, val_ds)"
    )


def _is_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("tensorflow") and hasattr(obj, "element_spec")


def _split(data: TrainData, validation_split: float) -> TrainData:
    """Exactly Keras' split: the *last* fraction (before any shuffling) becomes validation data."""
    n = len(data)
    split_at = int(math.floor(n * (1.0 - validation_split)))
    if split_at in (0, n):
        raise UserCodeError(f"fit.validation_split={validation_split} leaves no data on one side of {n} samples")
    head, tail = slice(0, split_at), slice(split_at, n)
    sw = data.sw
    return TrainData(fitdata.take(data.x, head), fitdata.take(data.y, head), fitdata.take(data.x, tail),
                     fitdata.take(data.y, tail), sw=None if sw is None else fitdata.take(sw, head),
                     sw_val=None if sw is None else fitdata.take(sw, tail))


def epoch_dataset(data: TrainData, batch_size: int, shuffle: bool, seed: int, first_epoch: int, epochs: int,
                  skip_batches: int = 0, steps: int | None = None, initial_epoch: int = 0) -> Any:
    """One tf.data pipeline covering epochs ``first_epoch..epochs-1`` (0-based).

    Epoch ``e``'s order is ``stateless_shuffle(seed=(seed, e))``: a function of the job seed and the epoch number
    only, so a resumed run replays exactly the batches the uninterrupted run would have seen.
    ``skip_batches`` drops the batches of ``first_epoch`` already trained before a mid-epoch preemption.
    With ``steps`` (Keras' steps_per_epoch) below the batches in the data, an epoch is the next ``steps`` batches of
    one pass, counted from ``initial_epoch`` as Keras counts them; the shuffle seed is then the pass number.
    """
    import tensorflow as tf

    def const(v: Any) -> Any:  # tf.data elements hold tuples, not lists (a list would be stacked into one tensor)
        return tuple(tf.constant(a) for a in v) if isinstance(v, list) else tf.nest.map_structure(tf.constant, v)

    x, y = const(data.x), const(data.y)
    sw = None if data.sw is None else const(data.sw)
    n = len(data)
    batches = math.ceil(n / batch_size)
    per_pass = batches // steps if steps and steps < batches else 1

    def gather(i: Any) -> Any:
        take = (lambda t: tf.gather(t, i))  # noqa: E731 - a one-line helper mapped over the structures
        xy = (tf.nest.map_structure(take, x), tf.nest.map_structure(take, y))
        return xy if sw is None else (*xy, tf.nest.map_structure(take, sw))

    def one_epoch(e: Any) -> Any:
        rel = tf.cast(e, tf.int64) - initial_epoch
        pass_ = rel // per_pass if per_pass > 1 else tf.cast(e, tf.int64)
        idx = tf.range(n, dtype=tf.int64)
        if shuffle:
            s = tf.stack([tf.constant(seed, tf.int64), pass_])
            idx = tf.random.experimental.stateless_shuffle(idx, seed=s)
        ds = tf.data.Dataset.from_tensor_slices(idx).batch(batch_size)
        if per_pass > 1:
            assert steps is not None
            ds = ds.skip((rel % per_pass) * steps).take(steps)
        ds = ds.skip(tf.where(tf.equal(e, first_epoch), tf.constant(skip_batches, tf.int64), tf.constant(0, tf.int64)))
        return ds.map(gather)

    epochs_ds = tf.data.Dataset.range(first_epoch, epochs)
    return epochs_ds.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)
