"""A user tf.data pipeline stopped mid-epoch resumes at its batch: each sample trained exactly once per epoch.

A real, tiny Keras model counts the samples it trains on (a non-trainable per-sample counter updated in the train
step, saved and restored with the weights, as a checkpoint would). The "stopped attempt" and the "resumed attempt"
each rebuild the pipeline and the model from the seed, as two worker processes do.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from worker.data_resume import ITERATOR, SKIP, DataPosition, ResumableDataset

N, BATCH, EPOCHS, SEED = 48, 4, 3, 7  # 12 batches per epoch


class Seen(keras.layers.Layer):
    """Counts, per sample id, how often a training step saw it."""

    def build(self, input_shape: Any) -> None:
        self.counts = self.add_weight(shape=(N,), initializer="zeros", trainable=False, name="counts")

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x, ids = inputs
        if training:
            self.counts.assign_add(tf.math.bincount(tf.cast(ids, tf.int32), minlength=N, maxlength=N,
                                                    dtype=self.counts.dtype))
        return x


def build_model() -> keras.Model:
    x_in = keras.Input((2,), name="x")
    id_in = keras.Input((), dtype="int64", name="id")
    h = Seen(name="seen")([x_in, id_in])
    model = keras.Model({"x": x_in, "id": id_in}, keras.layers.Dense(1)(h))
    model.compile(optimizer="sgd", loss="mse")
    return model


def pipeline(kind: str) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, 2)).astype("float32"), rng.normal(size=(N, 1)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(({"x": x, "id": np.arange(N)}, y))
    if kind == "generator":  # Python state: TensorFlow cannot save this pipeline's iterator
        def gen() -> Any:
            for i in range(N):
                yield {"x": x[i], "id": np.int64(i)}, y[i]
        spec = ({"x": tf.TensorSpec((2,), tf.float32), "id": tf.TensorSpec((), tf.int64)}, tf.TensorSpec((1,)))
        ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    if kind == "py_function":
        ds = ds.map(lambda f, t: ({"x": tf.py_function(lambda v: v * 1.0, [f["x"]], tf.float32), "id": f["id"]}, t))
        ds = ds.map(lambda f, t: ({"x": tf.ensure_shape(f["x"], (2,)), "id": f["id"]}, t))
    return ds.shuffle(16, reshuffle_each_iteration=True).batch(BATCH).prefetch(2)


class StopAt(keras.callbacks.Callback):
    """Takes the data position and the model's state after ``batch`` batches of ``epoch`` (0-based), then stops."""

    def __init__(self, rd: ResumableDataset, epoch: int, batch: int) -> None:
        super().__init__()
        self.rd, self.stop_epoch, self.stop_batch, self.epoch = rd, epoch, batch, 0
        self.saved: tuple[DataPosition, list[Any]] | None = None

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.epoch == self.stop_epoch and batch + 1 == self.stop_batch:
            self.saved = (DataPosition.from_bytes(self.rd.position().to_bytes()), self.model.get_weights())
            raise KeyboardInterrupt  # stands for the SIGKILL: nothing after this batch happens


class EpochCounts(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.after: dict[int, np.ndarray] = {}

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.after[epoch] = self.model.get_layer("seen").counts.numpy().copy()


def attempt(kind: str) -> tuple[keras.Model, ResumableDataset]:
    keras.utils.set_random_seed(SEED)  # what every attempt does first
    ds = pipeline(kind)
    return build_model(), ResumableDataset(ds)


def run_uninterrupted(kind: str) -> list[Any]:
    model, rd = attempt(kind)
    model.fit(rd.for_fit(), epochs=EPOCHS, callbacks=[rd.callback()], verbose=0, shuffle=False)
    return model.get_weights()


@pytest.mark.parametrize(("kind", "mode"), [("tensors", ITERATOR), ("generator", SKIP), ("py_function", SKIP)])
def test_stopped_mid_epoch_resumes_at_its_batch_and_trains_each_sample_once(kind: str, mode: str) -> None:
    model, rd = attempt(kind)
    stop = StopAt(rd, epoch=1, batch=5)
    with pytest.raises(KeyboardInterrupt):
        model.fit(rd.for_fit(), epochs=EPOCHS, callbacks=[rd.callback(), stop], verbose=0, shuffle=False)
    assert stop.saved is not None
    pos, weights = stop.saved
    assert (pos.mode, pos.iterators, pos.batches) == (mode, 2, 5)
    assert (pos.state is not None) == (mode == ITERATOR)
    assert (pos.why != "") == (mode == SKIP)
    counts = weights[[w.shape for w in weights].index((N,))]
    assert sorted(counts.tolist()).count(2.0) == 5 * BATCH and sorted(counts.tolist()).count(1.0) == N - 5 * BATCH

    # The next attempt: fresh pipeline and model from the seed, the checkpoint's weights, the data position.
    model2, rd2 = attempt(kind)
    model2.set_weights(weights)
    resumed = rd2.resume(pos)
    assert (resumed.how, resumed.batches) == (mode, 5)
    counts_cb = EpochCounts()
    model2.fit(rd2.for_fit(), initial_epoch=1, epochs=2, steps_per_epoch=12 - 5,
               callbacks=[rd2.callback(), counts_cb], verbose=0, shuffle=False)
    assert counts_cb.after[1].tolist() == [2.0] * N  # the rest of epoch 2: every sample exactly once more
    model2.fit(rd2.for_fit(), initial_epoch=2, epochs=EPOCHS, callbacks=[rd2.callback(), counts_cb], verbose=0,
               shuffle=False)
    assert counts_cb.after[2].tolist() == [3.0] * N

    # The order after the resume is the uninterrupted run's (the reshuffle seeds were replayed): same weights.
    final = run_uninterrupted(kind)
    for a, b in zip(model2.get_weights(), final):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_epoch_end_position_starts_the_next_pass() -> None:
    model, rd = attempt("tensors")
    model.fit(rd.for_fit(), epochs=2, callbacks=[rd.callback()], verbose=0, shuffle=False)
    pos = rd.position(pass_done=True)
    assert (pos.iterators, pos.batches, pos.state) == (3, 0, None)  # passes 1 and 2 done, the third untouched
    model2, rd2 = attempt("tensors")
    assert rd2.resume(pos).how == "pass"
    assert rd2.iterators == 3


def test_a_state_over_the_bound_switches_to_skip() -> None:
    model, rd = attempt("tensors")
    rd.max_state_bytes = 10
    stop = StopAt(rd, epoch=0, batch=3)
    with pytest.raises(KeyboardInterrupt):
        model.fit(rd.for_fit(), epochs=1, callbacks=[rd.callback(), stop], verbose=0, shuffle=False)
    assert stop.saved is not None and stop.saved[0].mode == SKIP and "MiB" in stop.saved[0].why


def test_position_bytes_round_trip_and_bad_input() -> None:
    pos = DataPosition(ITERATOR, 3, 7, b"\x00\x01state", "")
    assert DataPosition.from_bytes(pos.to_bytes()) == pos
    bad = DataPosition("teleport", 1, 1).to_bytes()
    with pytest.raises(ValueError, match="unknown mode"):
        DataPosition.from_bytes(bad)
    with pytest.raises(ValueError, match="inconsistent"):
        DataPosition.from_bytes(DataPosition(SKIP, 0, 4).to_bytes())
