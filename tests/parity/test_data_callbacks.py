"""tf.data.Dataset input, custom objects and the Keras callbacks traind runs, each against plain ``model.fit``."""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from jobs.client import Client
from tests.parity import objects
from tests.parity.conftest import assert_same_history, plain_fit, run_worker, traind_fit


def test_dataset_with_validation_dataset_and_early_stopping(client: Client) -> None:
    x, y = objects.regression()
    train = tf.data.Dataset.from_tensor_slices((x[:180], y[:180])).batch(30).map(lambda a, b: (a * 1.5, b))
    val = tf.data.Dataset.from_tensor_slices((x[180:], y[180:])).batch(30)
    es = dict(monitor="val_loss", patience=1, min_delta=0.05, restore_best_weights=True)
    ref, plain_model = plain_fit(objects.dense, train, epochs=25, validation_data=val,
                                 callbacks=[keras.callbacks.EarlyStopping(**es)])
    assert len(ref["loss"]) < 25
    job, st = traind_fit(client, objects.dense, train, epochs=25, validation_data=val,
                         callbacks=[keras.callbacks.EarlyStopping(**es)])
    assert st["stopped_early"] is True
    assert_same_history(st, ref, list(range(1, len(ref["loss"]) + 1)), ("loss", "val_loss", "val_mae"))
    assert job.spec()["data"]["dataset"] and job.spec()["data"]["validation_dataset"]
    for a, b in zip(job.load_model("final").get_weights(), plain_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_dataset_with_sample_weights_and_class_weight(client: Client) -> None:
    x, y = objects.classes()
    ds = tf.data.Dataset.from_tensor_slices((x[:200], y[:200])).batch(40)
    val = tf.data.Dataset.from_tensor_slices((x[200:], y[200:])).batch(40)
    kw = dict(epochs=3, validation_data=val, class_weight={0: 0.3, 1: 1.0, 2: 3.0})
    ref, _ = plain_fit(objects.classifier, ds, **kw)
    _, st = traind_fit(client, objects.classifier, ds, **kw)
    assert_same_history(st, ref, [1, 2, 3], ("loss", "val_loss", "accuracy"))


def test_custom_layer_declared_once_trains_like_keras(client: Client) -> None:
    x, y = objects.regression()
    build = lambda: objects.dense(scale=True)  # noqa: E731
    kw = dict(epochs=3, batch_size=40, validation_split=0.25)
    ref, _ = plain_fit(build, x, y, **kw)
    job, st = traind_fit(client, build, x, y, custom_objects={"Scale": objects.Scale}, **kw)
    assert job.spec()["model"]["custom_objects"] == ["tests.parity.objects:Scale"]
    assert_same_history(st, ref, [1, 2, 3])
    assert any(type(layer).__name__ == "Scale" for layer in job.load_model("final").layers)


def test_custom_objects_through_model_section(client: Client) -> None:
    """``fit(..., model={"custom_objects": [...]})`` was a TypeError (``model`` was also the first parameter)."""
    x, y = objects.regression(60)
    keras.utils.set_random_seed(1)
    job = client.fit(objects.dense(scale=True), x, y, epochs=1,
                     model={"custom_objects": ["tests.parity.objects:Scale"]})
    assert job.spec()["model"]["custom_objects"] == ["tests.parity.objects:Scale"]


def test_csv_logger_and_lr_scheduler_match_keras(client: Client, tmp_path: Path) -> None:
    x, y = objects.regression()
    kw = dict(epochs=5, batch_size=40, validation_split=0.25)
    keras_csv = tmp_path / "keras.csv"
    # traind runs the scheduler before the logger (so the CSV has the learning_rate column): the same order here
    ref, _ = plain_fit(objects.dense, x, y, **kw, callbacks=[
        keras.callbacks.LearningRateScheduler(objects.halve_every_2),
        keras.callbacks.CSVLogger(str(keras_csv), separator=";")])
    job, st = traind_fit(client, objects.dense, x, y, **kw, callbacks=[
        keras.callbacks.CSVLogger("ignored-client-path.csv", separator=";"),
        keras.callbacks.LearningRateScheduler(objects.halve_every_2)])
    assert job.spec()["lr_scheduler"] == {"schedule": "tests.parity.objects:halve_every_2"}
    assert_same_history(st, ref, [1, 2, 3, 4, 5], ("loss", "val_loss", "learning_rate"))
    np.testing.assert_allclose(ref["learning_rate"], [0.05, 0.05, 0.025, 0.025, 0.0125], rtol=1e-6)
    ours = list(csv.reader((client.storage.job_dir(job.id) / "training.csv").open(), delimiter=";"))
    theirs = list(csv.reader(keras_csv.open(), delimiter=";"))
    assert ours[0] == theirs[0] == ["epoch", "learning_rate", "loss", "mae", "val_loss", "val_mae"]
    assert [r[0] for r in ours[1:]] == ["0", "1", "2", "3", "4"]
    np.testing.assert_allclose(np.array(ours[1:], float), np.array(theirs[1:], float), rtol=0, atol=1e-5)


def test_terminate_on_nan_fails_the_job_with_the_reason(client: Client) -> None:
    x, y = objects.regression(120)
    y = y.copy()
    y[50] = np.nan
    keras.utils.set_random_seed(1)
    job = client.fit(objects.dense(), x, y, epochs=3, batch_size=20, shuffle=False,
                     callbacks=[keras.callbacks.TerminateOnNaN()])
    run_worker(client)
    st = job.status(with_history=True)
    assert st["state"] == "failed"
    assert "TerminateOnNaN: loss became nan at epoch 1, batch 3" in st["error"]
    assert st["restarts"] == 0 and st["history"] == []
