"""Resume a user's ``tf.data.Dataset`` at the batch where training stopped, not at the start of the epoch.

Keras' ``fit`` calls ``iter(dataset)`` at the start of each epoch (or, with ``steps_per_epoch``, whenever the data
runs out) and keeps that iterator to itself. :class:`ResumableDataset` hands ``fit`` a dataset whose ``iter()``
returns iterators it owns, counts the batches taken from each (:meth:`ResumableDataset.callback`), and at a checkpoint
describes where the data stands (:class:`DataPosition`). Two ways to come back to that point:

- ``iterator``: the iterator's own state (position, shuffle buffers, random state), saved with TensorFlow's
  ``tf.train.Checkpoint(iterator=...)`` and restored into a fresh iterator of the rebuilt pipeline. Exact.
- ``skip``: where a pipeline cannot be saved (``py_function``, ``from_generator``: TensorFlow refuses to serialize
  their Python state) or its state is too large: the epoch's order is recreated and the batches already trained are
  read and dropped. A pipeline's order is a function of the seeds (traind seeds every attempt with ``fit.seed``) and
  of how many times it was iterated before (``reshuffle_each_iteration`` draws new seeds per ``iter()``), so the
  resumed attempt first creates, unused, as many iterators as the stopped one had. A pipeline whose order is not
  reproducible (``deterministic=False`` maps, unseeded Python randomness in a generator) cannot be skipped exactly.

Every iterator counts, the unused ones too, so the epochs after a resume see the order an uninterrupted run saw.
Not covered: a Dataset fed through a ``tf.distribute`` strategy with several devices (the strategy iterates a
rebatched copy; such jobs resume at epoch ends), and a pipeline whose order depends on other datasets being iterated
(a validation split taken from the same shuffled dataset).

>>> # rd = ResumableDataset(user_ds); rd.resume(pos); model.fit(rd.for_fit(), callbacks=[rd.callback(), ...])
>>> # pos = rd.position()  # at a checkpoint: DataPosition(mode, iterators, batches, state)
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("traind.worker")

ITERATOR, SKIP = "iterator", "skip"
MAX_STATE_BYTES = 256 * 2**20  # a saved shuffle buffer beyond this switches the job to skip-ahead
_MAX_THROWAWAY = 100_000  # iterators created only to advance the pipeline's reshuffle seeds


@dataclass(frozen=True)
class DataPosition:
    """Where a Dataset job's data stands at a checkpoint: ``iterators`` created so far (the last one current),
    ``batches`` taken from the current one (0: it is untouched), and for mode ``iterator``
    its saved ``state``; ``why`` says why a job skips instead."""

    mode: str
    iterators: int
    batches: int
    state: bytes | None = None
    why: str = ""

    def to_bytes(self) -> bytes:
        """A self-describing ``.npz`` (no pickle): the metadata as JSON, the iterator state as raw bytes."""
        meta = {"mode": self.mode, "iterators": self.iterators, "batches": self.batches,
                "why": self.why}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 state=np.frombuffer(self.state or b"", np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DataPosition:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            state = z["state"].tobytes()
        mode = meta.get("mode")
        if mode not in (ITERATOR, SKIP):
            raise ValueError(f"data position: unknown mode {mode!r}")
        iterators, batches = int(meta["iterators"]), int(meta["batches"])
        if iterators < 0 or batches < 0 or (batches and not iterators):
            raise ValueError(f"data position: inconsistent iterators={iterators} batches={batches}")
        return cls(mode, iterators, batches, state or None, str(meta.get("why", "")))


@dataclass(frozen=True)
class Resumed:
    """How a resume went, for the job's events: ``how`` is ``iterator``, ``skip`` or ``pass`` (a new pass)."""

    how: str
    iterators: int
    batches: int
    detail: str


def save_iterator(iterator: Any) -> bytes:
    """The iterator's state as bytes (``tf.train.Checkpoint`` files packed into an ``.npz``); raises TensorFlow's
    FailedPreconditionError/UnimplementedError for a pipeline that cannot be saved."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="traind-it-") as d:
        tf.train.Checkpoint(iterator=iterator).write(os.path.join(d, "it"))
        files = {name: np.frombuffer(open(os.path.join(d, name), "rb").read(), np.uint8) for name in os.listdir(d)}
    buf = io.BytesIO()
    np.savez(buf, **files)
    return buf.getvalue()


def restore_iterator(iterator: Any, state: bytes) -> None:
    """Restore ``state`` (from :func:`save_iterator`) into a fresh iterator of the same pipeline."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="traind-it-") as d:
        with np.load(io.BytesIO(state), allow_pickle=False) as z:
            for name in z.files:
                if os.sep in name or name.startswith("."):
                    raise ValueError(f"data position: bad file name {name!r} in the iterator state")
                with open(os.path.join(d, name), "wb") as f:
                    f.write(z[name].tobytes())
        tf.train.Checkpoint(iterator=iterator).read(os.path.join(d, "it")).assert_consumed()


class ResumableDataset:
    """Owns the iterators ``fit`` takes from a user ``dataset`` (see the module doc).

    ``class_weight`` is applied here (Keras would otherwise map the dataset and iterate the copy itself).
    """

    def __init__(self, dataset: Any, *, class_weight: dict[int, float] | None = None,
                 max_state_bytes: int = MAX_STATE_BYTES) -> None:
        if class_weight:
            from worker.keras_compat import class_weight_map_fn  # Keras' own mapping, as fit applies it

            dataset = dataset.map(class_weight_map_fn(class_weight))
        self.dataset = dataset
        self.max_state_bytes = max_state_bytes
        self.mode = ITERATOR
        self.why = ""
        self.iterators = 0
        self.batches = 0
        self.current: Any = None
        self.training = False  # between fit's on_train_begin and on_train_end (see next_iterator)
        self._peeked = False
        self._pending: Any = None  # the restored iterator fit's next iter() call receives

    # -- what fit sees -------------------------------------------------------------------------------------------
    def for_fit(self) -> Any:
        """The dataset to pass to ``fit`` (after :meth:`resume`, its first ``iter()`` continues there)."""
        return _OwnedIterDataset(self)

    def resume(self, pos: DataPosition) -> Resumed:
        """Recreate ``pos``: create and drop the iterators before the current one (their reshuffle seeds), then
        create the current one and bring it to ``pos.batches``; fit's next ``iter()`` receives it."""
        self._advance_to(pos.iterators - 1)
        it = iter(self.dataset)
        self.iterators += 1
        self.mode, self.why = pos.mode, pos.why
        if not pos.batches:
            how, detail = "pass", f"a new pass over the data (pass {self.iterators})"
        elif pos.mode == ITERATOR and pos.state is not None:
            restore_iterator(it, pos.state)
            how, detail = ITERATOR, "tf.data iterator state restored (position, shuffle buffers, random state)"
        else:
            for _ in range(pos.batches):  # read and dropped: the same order, recreated from the seeds
                next(it)
            how, detail = SKIP, f"skipped the {pos.batches} batch(es) already trained in the recreated order" + (
                f" ({pos.why})" if pos.why else "")
        self.batches = pos.batches
        self._pending = it
        return Resumed(how, self.iterators, pos.batches, detail)

    def _advance_to(self, n: int) -> None:
        if n - self.iterators > _MAX_THROWAWAY:
            log.warning("data resume: %d passes to replay; the reshuffle order is not reproduced", n)
            self.iterators = n
        while self.iterators < n:
            iter(self.dataset)  # never read: creating it draws this pass's reshuffle seeds
            self.iterators += 1

    def next_iterator(self) -> Any:
        """``iter()`` of the dataset handed to fit: the resumed iterator first; then the current iterator while no
        batch was taken from it (Keras asks again at the next epoch start for an iterator it made at the end of the
        last one); else a new pass.

        Before training begins, Keras' fit may take one batch to build an unbuilt model (``_symbolic_build``, in a
        fresh process only): it gets a stand-in of the right shapes, so that it neither consumes a batch nor draws a
        reshuffle seed that an uninterrupted run would not have drawn."""
        if not self.training:
            if self._peeked:
                raise RuntimeError("ResumableDataset.callback() must be among fit's callbacks")
            peek = _stand_in(self.dataset.element_spec)
            if peek is not None:
                self._peeked = True
                return iter(peek)
        if self._pending is not None:
            self.current, self._pending = self._pending, None
        elif self.current is None or self.batches:
            self.current = iter(self.dataset)
            self.iterators += 1
            self.batches = 0
        return self.current

    # -- counting and saving -------------------------------------------------------------------------------------
    def callback(self) -> Any:
        """A Keras callback counting the batches ``fit`` took from the current iterator."""
        import keras

        owner = self

        class _Count(keras.callbacks.Callback):
            def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
                owner.training, owner._peeked = True, False

            def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
                owner.training = False

            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                owner.batches += 1

        return _Count()

    def position(self, *, pass_done: bool = False) -> DataPosition:
        """Where the data stands now (between batches, on the training thread). ``pass_done``: an epoch end that
        ends the pass too (no ``steps_per_epoch``): the next pass starts untouched, no state is needed."""
        if not self.batches:
            return DataPosition(self.mode, self.iterators, 0, None, self.why)
        if pass_done:
            return DataPosition(self.mode, self.iterators + 1, 0, None, self.why)
        state = self._try_save() if self.mode == ITERATOR and self.current is not None else None
        return DataPosition(self.mode, self.iterators, self.batches, state, self.why)

    def _try_save(self) -> bytes | None:
        import tensorflow as tf

        try:
            state = save_iterator(self.current)
        except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError) as e:
            self._to_skip(f"the pipeline cannot be saved: {str(e).strip().splitlines()[-1][:200]}")
            return None
        if len(state) > self.max_state_bytes:
            self._to_skip(f"its saved state is {len(state) / 2**20:.0f} MiB (shuffle buffers), over "
                          f"{self.max_state_bytes / 2**20:.0f} MiB")
            return None
        return state

    def _to_skip(self, why: str) -> None:
        self.mode, self.why = SKIP, why
        log.info("data resume: skip-ahead, %s", why)


def _stand_in(spec: Any) -> Any:
    """A one-element dataset of zeros shaped like ``spec`` (unknown batch dimension: 1); None where another
    dimension is unknown or a component is not a dense tensor (fit then peeks at a real batch)."""
    import tensorflow as tf

    leaves = tf.nest.flatten(spec)
    if not all(isinstance(s, tf.TensorSpec) and s.shape.rank is not None and None not in s.shape[1:] for s in leaves):
        return None
    zeros = [tf.zeros([d if d is not None else 1 for d in s.shape], s.dtype) for s in leaves]
    return tf.data.Dataset.from_tensors(tf.nest.pack_sequence_as(spec, zeros))


def _owned_iter_dataset_class() -> type:
    import tensorflow as tf

    class OwnedIterDataset(tf.data.Dataset):
        """The user's dataset as fit sees it: same elements, but ``iter()`` comes from :class:`ResumableDataset`."""

        def __init__(self, owner: ResumableDataset) -> None:
            self._owner = owner
            self._base = owner.dataset
            super().__init__(owner.dataset._variant_tensor)  # the same pipeline: cardinality, options, spec

        def _inputs(self) -> list[Any]:
            return [self._base]

        @property
        def element_spec(self) -> Any:
            return self._base.element_spec

        def __iter__(self) -> Any:
            return self._owner.next_iterator()

    return OwnedIterDataset


_CLASS: type | None = None


def _OwnedIterDataset(owner: ResumableDataset) -> Any:  # noqa: N802 - a class made once TensorFlow is imported
    global _CLASS
    if _CLASS is None:
        _CLASS = _owned_iter_dataset_class()
    return _CLASS(owner)


def resume_dataset(resumable: ResumableDataset | None, data: bytes | None, epoch: int, batch: int,
                   ledger: Any) -> Resumed | None:
    """Bring a Dataset job's data to its checkpoint's position and say how, in a ``data_resumed`` event (``epoch``
    1-based of the resumed epoch, ``batch`` the batches already trained in it). Nothing for arrays or a checkpoint
    without a position (taken before traind saved one: the data then starts a new pass, as it did)."""
    from jobs.contract.events import EventKind, event

    if resumable is None or data is None:
        return None
    try:
        pos = DataPosition.from_bytes(data)
    except (ValueError, KeyError, OSError) as e:
        ledger.note(f"the checkpoint's data position is unreadable ({e}); the data starts a new pass", "warning")
        return None
    res = resumable.resume(pos)
    if res.batches:
        ledger.write(events=[event(EventKind.DATA_RESUMED, f"Dataset resumed at epoch {epoch} batch {batch + 1}: "
                                   f"{res.detail}", how=res.how, epoch=epoch, batch=batch, iterators=res.iterators)])
    return res
