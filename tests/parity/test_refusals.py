"""What ``client.fit``/``submit`` refuse, before anything is queued, and why (each message names what was received)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import redis
import tensorflow as tf

from jobs.client import Client
from jobs.contract import keys
from jobs.errors import SpecError
from tests.parity import objects
from tests.parity.conftest import run_worker


def _nothing_queued(r: redis.Redis) -> None:
    assert r.zcard(keys.JOBS_INDEX) == 0 and r.keys("rq:*") == [], r.keys("*")


def refused(client: Client, r: redis.Redis, *args: object, **kwargs: object) -> str:
    keras.utils.set_random_seed(0)
    with pytest.raises(SpecError) as ei:
        client.fit(*args, **kwargs)
    _nothing_queued(r)
    return str(ei.value)


X, Y = objects.regression(80)


def test_generators_and_python_pipelines_refused(client: Client, r: redis.Redis) -> None:
    msg = refused(client, r, objects.dense(), (b for b in [(X, Y)]), epochs=1)
    assert "x: a generator yields batches from Python code" in msg and "loader module" in msg
    gen = tf.data.Dataset.from_generator(lambda: iter([(X[0], Y[0])]), output_signature=(
        tf.TensorSpec((4,), tf.float32), tf.TensorSpec((1,), tf.float32)))
    msg = refused(client, r, objects.dense(), gen.batch(8), epochs=1)
    assert "calls Python code" in msg and "data.loader: 'module:function'" in msg
    pyfn = tf.data.Dataset.from_tensor_slices((X, Y)).map(
        lambda a, b: (tf.py_function(lambda t: t, [a], tf.float32), b))
    assert "EagerPyFunc" in refused(client, r, objects.dense(), pyfn.batch(8), epochs=1)
    inf = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8).repeat()
    assert "the Dataset is infinite" in refused(client, r, objects.dense(), inf, epochs=1)
    seq = type("Batches", (keras.utils.PyDataset,), {"__len__": lambda s: 1, "__getitem__": lambda s, i: (X, Y)})()
    assert "x: a Batches yields batches from Python code" in refused(client, r, objects.dense(), seq, epochs=1)


def test_keras_arguments_not_supported_are_named(client: Client, r: redis.Redis) -> None:
    msg = refused(client, r, objects.dense(), X, Y, epochs=1, workers=4, use_multiprocessing=True)
    assert "workers: Keras fit argument not supported by traind" in msg
    assert "use_multiprocessing: Keras fit argument not supported by traind" in msg
    assert "class_weights: not a Keras fit argument nor a traind spec section; did you mean 'class_weight'?" in \
        refused(client, r, objects.dense(), X, Y, epochs=1, class_weights={0: 1.0})
    assert "fit.validation_freq: Input should be greater than or equal to 1" in \
        refused(client, r, objects.dense(), X, Y, epochs=2, validation_freq=0)
    assert "initial_epoch (3) must be below epochs (2)" in refused(client, r, objects.dense(), X, Y, epochs=2,
                                                                    initial_epoch=3)


def test_monitor_typo_and_missing_validation_refused_at_submit(client: Client, r: redis.Redis) -> None:
    cb = keras.callbacks.ModelCheckpoint("best.keras", monitor="val_los", save_best_only=True)
    msg = refused(client, r, objects.dense(), X, Y, epochs=2, validation_split=0.25, callbacks=[cb])
    assert "checkpoint.monitor: 'val_los' is not a metric this job logs" in msg
    assert "did you mean 'val_loss'?" in msg
    es = keras.callbacks.EarlyStopping(monitor="val_mae", patience=2)
    msg = refused(client, r, objects.dense(), X, Y, epochs=2, callbacks=[es])
    assert "early_stopping.monitor: 'val_mae' needs validation data, and this job has none" in msg
    msg = refused(client, r, objects.classifier(), *objects.classes(60), epochs=2, validation_split=0.2,
                  callbacks=[keras.callbacks.ReduceLROnPlateau(monitor="val_acc")])
    assert "lr_on_plateau.monitor: 'val_acc' is not a metric" in msg and "did you mean 'val_accuracy'?" in msg


def test_spec_val_monitor_without_validation_refused(client: Client, r: redis.Redis) -> None:
    digest = client.storage.ensure().put_arrays({"x": X, "y": Y})
    spec = {"name": "s", "model": {"builder": "tests.parity.objects:dense"}, "data": {"arrays": digest},
            "fit": {"epochs": 2}, "checkpoint": {"monitor": "val_loss"}}
    with pytest.raises(SpecError, match="checkpoint.monitor: 'val_loss' needs validation data"):
        client.submit(spec)
    _nothing_queued(r)


def test_spec_monitor_typo_with_loader_fails_fast_on_the_worker(client: Client) -> None:
    spec = {"name": "s", "model": {"builder": "tests.parity.objects:dense"},
            "data": {"loader": "tests.parity.objects:regression_loader"},
            "fit": {"epochs": 30, "validation_split": 0.2}, "early_stopping": {"monitor": "val_mea"}}
    job = client.submit(spec)
    run_worker(client)
    st = job.status(with_history=True)
    assert st["state"] == "failed" and st["history"] == [] and st["restarts"] == 0
    assert "early_stopping.monitor: 'val_mea' is not a metric this job logs" in st["error"]
    assert "did you mean 'val_mae'?" in st["error"]


def test_custom_objects_refused_before_queueing(client: Client, r: redis.Redis) -> None:
    # not declared: the worker could not rebuild the model, so neither can the client
    msg = refused(client, r, objects.dense(scale=True), X, Y, epochs=1)
    assert "model: a worker could not rebuild this model: Keras could not locate class 'Scale'" in msg, msg
    assert len(msg) < 600

    class Notebook(keras.layers.Layer):
        def call(self, x: object) -> object:
            return x

    msg = refused(client, r, objects.dense(), X, Y, epochs=1, custom_objects={"Notebook": Notebook})
    assert "which a worker cannot import; move it into a module under TRAIND_ALLOWED_MODULES" in msg
    msg = refused(client, r, objects.dense(), X, Y, epochs=1, custom_objects=["numpy.linalg:norm"])
    assert "module 'numpy.linalg' is not allowed" in msg


def test_callbacks_refused_with_reasons(client: Client, r: redis.Redis) -> None:
    msg = refused(client, r, objects.dense(), X, Y, epochs=1, callbacks=[keras.callbacks.BackupAndRestore("/tmp/b")])
    assert "traind already checkpoints and resumes every job" in msg
    msg = refused(client, r, objects.dense(), X, Y, epochs=1, callbacks=[keras.callbacks.LambdaCallback()])
    assert "LambdaCallback cannot be sent to a worker (no code crosses Redis)" in msg
    sched = keras.callbacks.LearningRateScheduler(lambda e, lr: lr)
    assert "LearningRateScheduler.schedule" in refused(client, r, objects.dense(), X, Y, epochs=1, callbacks=[sched])

    class MyCallback(keras.callbacks.Callback):
        pass

    assert "MyCallback cannot be sent to a worker" in refused(client, r, objects.dense(), X, Y, epochs=1,
                                                              callbacks=[MyCallback()])


def test_ragged_and_mismatched_data_refused(client: Client, r: redis.Redis) -> None:
    msg = refused(client, r, objects.dense(), [np.zeros(3), np.zeros(2)], Y, epochs=1)
    assert "dtype object" in msg or "same number of samples" in msg
    msg = refused(client, r, objects.dense(), X, Y[:10], epochs=1)
    assert "expected the same number of samples in every array" in msg and "y: 10" in msg
    assert "validation_data: expected a tuple" in refused(client, r, objects.dense(), X, Y, epochs=1,
                                                          validation_data=[X])
