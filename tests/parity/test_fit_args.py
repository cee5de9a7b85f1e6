"""``client.fit`` arguments with Keras semantics, trained by a real worker and compared with plain ``model.fit``."""

from __future__ import annotations

from functools import partial

import keras
import numpy as np

from jobs.client import Client
from tests.parity import objects
from tests.parity.conftest import assert_same_history, plain_fit, traind_fit


def test_sample_weight_and_validation_sample_weight(client: Client) -> None:
    x, y = objects.regression()
    sw = np.linspace(0.2, 2.0, len(x)).astype("float32")
    xt, yt, swt, xv, yv, swv = x[:180], y[:180], sw[:180], x[180:], y[180:], sw[180:]
    kw = dict(epochs=4, batch_size=30, sample_weight=swt, validation_data=(xv, yv, swv))
    ref, _ = plain_fit(objects.dense, xt, yt, **kw)
    unweighted, _ = plain_fit(objects.dense, xt, yt, epochs=4, batch_size=30, validation_data=(xv, yv))
    assert abs(ref["val_loss"][-1] - unweighted["val_loss"][-1]) > 1e-3, "the weights must matter"
    _, st = traind_fit(client, objects.dense, xt, yt, **kw)
    assert_same_history(st, ref, [1, 2, 3, 4], ("loss", "val_loss", "mae", "val_mae"))


def test_sample_weight_with_validation_split(client: Client) -> None:
    x, y = objects.regression()
    sw = np.linspace(2.0, 0.1, len(x)).astype("float32")
    kw = dict(epochs=3, batch_size=40, sample_weight=sw, validation_split=0.25)
    ref, _ = plain_fit(objects.dense, x, y, **kw)
    _, st = traind_fit(client, objects.dense, x, y, **kw)
    assert_same_history(st, ref, [1, 2, 3])


def test_class_weight_and_early_stopping(client: Client) -> None:
    x, y = objects.classes()
    cw = {0: 0.5, 1: 2.0, 2: 4.0}
    es = dict(monitor="val_loss", patience=1, min_delta=0.05)
    kw = dict(epochs=30, batch_size=40, class_weight=cw, validation_split=0.25)
    ref, _ = plain_fit(objects.classifier, x, y, callbacks=[keras.callbacks.EarlyStopping(**es)], **kw)
    unweighted, _ = plain_fit(objects.classifier, x, y, epochs=2, batch_size=40, validation_split=0.25)
    assert abs(ref["loss"][0] - unweighted["loss"][0]) > 1e-3, "the class weights must matter"
    assert len(ref["loss"]) < 30, "Keras must stop early for the stop epoch to be compared"
    _, st = traind_fit(client, objects.classifier, x, y, callbacks=[keras.callbacks.EarlyStopping(**es)], **kw)
    assert st["stopped_early"] is True
    assert_same_history(st, ref, list(range(1, len(ref["loss"]) + 1)), ("loss", "val_loss", "accuracy"))


def test_initial_epoch_validation_freq_steps_and_batch_size(client: Client) -> None:
    x, y = objects.regression()
    xv, yv = objects.regression(90, seed=5)
    kw = dict(epochs=6, initial_epoch=1, batch_size=40, validation_data=(xv, yv), validation_freq=2,
              validation_steps=2, validation_batch_size=20)
    ref, _ = plain_fit(objects.dense, x, y, **kw)
    assert len(ref["val_loss"]) == 3 and len(ref["loss"]) == 5  # Keras validates epochs 2, 4 and 6
    _, st = traind_fit(client, objects.dense, x, y, **kw)
    assert_same_history(st, ref, [2, 3, 4, 5, 6])
    assert [h.get("val_loss") is not None for h in st["history"]] == [True, False, True, False, True]


def test_steps_per_epoch_with_arrays(client: Client) -> None:
    x, y = objects.regression()  # 240 samples: 6 batches of 40, so 3 epochs of 2 batches per pass
    kw = dict(epochs=5, batch_size=40, steps_per_epoch=2, validation_split=0.0)
    ref, _ = plain_fit(objects.dense, x, y, **kw)
    job, st = traind_fit(client, objects.dense, x, y, **kw)
    assert_same_history(st, ref, [1, 2, 3, 4, 5], ("loss", "mae"))
    assert job.spec()["checkpoint"]["monitor"] == "loss"  # no validation data: the default monitor is loss


def test_multi_input_dict_model(client: Client) -> None:
    x, y = objects.regression()
    xd = {"a": x[:, :3], "b": x[:, 3:]}
    es = partial(keras.callbacks.EarlyStopping, monitor="val_mae", patience=1, min_delta=0.02)
    kw = dict(epochs=25, batch_size=30, validation_split=0.25)
    ref, _ = plain_fit(objects.two_inputs, xd, y, callbacks=[es()], **kw)
    assert len(ref["loss"]) < 25
    job, st = traind_fit(client, objects.two_inputs, xd, y, callbacks=[es()], **kw)
    assert_same_history(st, ref, list(range(1, len(ref["loss"]) + 1)), ("loss", "val_loss", "val_mae"))
    # the job's final model takes the same dict of inputs
    model = job.load_model("final")
    assert model.predict({"a": x[:2, :3], "b": x[:2, 3:]}, verbose=0).shape == (2, 1)


def test_list_inputs_multi_output(client: Client) -> None:
    def build() -> keras.Model:
        a, b = keras.Input((3,)), keras.Input((1,))
        h = keras.layers.Dense(6, activation="relu")(keras.layers.Concatenate()([a, b]))
        m = keras.Model([a, b], [keras.layers.Dense(1, name="p")(h), keras.layers.Dense(1, name="q")(h)])
        m.compile(optimizer=keras.optimizers.Adam(0.05), loss=["mse", "mae"])
        return m

    x, y = objects.regression()
    kw = dict(epochs=3, batch_size=40, validation_split=0.2)
    xs, ys = [x[:, :3], x[:, 3:]], [y, 2 * y]
    ref, _ = plain_fit(build, xs, ys, **kw)
    _, st = traind_fit(client, build, xs, ys, **kw)
    assert_same_history(st, ref, [1, 2, 3], ("loss", "val_loss", "p_loss", "val_q_loss"))
