"""The "laptop" of tests/remote: run as a subprocess whose environment holds TRAIND_API_URL and TRAIND_API_TOKEN
and nothing else of traind's or AWS' (no Redis URL, no storage setting, no AWS_* variable). Fits a tiny model on
arrays (dict input, sample weights, initial weights) and on a tf.data Dataset, waits, loads both models and prints
one JSON line with what it saw."""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def main() -> None:
    assert not [k for k in os.environ if k.startswith("AWS_") or k in ("TRAIND_REDIS_URL", "TRAIND_STORAGE_DIR")]
    import keras
    import tensorflow as tf

    from jobs.client import Client

    client = Client()  # TRAIND_API_URL + TRAIND_API_TOKEN: the HTTP client
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(96, 3)).astype("float32"), rng.normal(size=(96, 1)).astype("float32")
    y = (xa.sum(axis=1, keepdims=True) + xb).astype("float32")
    a, b = keras.Input((3,), name="a"), keras.Input((1,), name="b")
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b}, out, name="remote_arrays")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    keras.utils.set_random_seed(0)
    model.fit({"a": xa, "b": xb}, y, epochs=1, verbose=0)  # trained a little here: initial weights travel
    job = client.fit(model, {"a": xa, "b": xb}, y, epochs=2, batch_size=32, validation_split=0.25,
                     sample_weight=np.ones(96, dtype="float32"))
    ds_model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="remote_dataset")
    ds_model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    ds = tf.data.Dataset.from_tensor_slices((xa, y)).batch(16)
    job2 = client.fit(ds_model, ds, epochs=2, validation_data=tf.data.Dataset.from_tensor_slices((xa, y)).batch(32))
    res = {"kind": type(client).__name__, "uploads": client.storage.uploaded}
    # submit_many, list and cancel through the same handles (builder specs: nothing to upload)
    from tests.serve.conftest import slow_spec

    many = client.submit_many([slow_spec("many-a", epochs=30), slow_spec("many-b", epochs=30)])
    listed = {j["id"] for j in client.list(limit=50)}
    res["many"] = {"listed": all(h.id in listed for h in many), "previous": [h.cancel().value for h in many],
                   "states": [client.job(h.id[:12]).state.value for h in many]}
    for name, j, m in (("arrays", job, model), ("dataset", job2, ds_model)):
        final = j.wait(timeout=float(sys.argv[1]))
        loaded = j.load_model()
        x = {"a": xa[:4], "b": xb[:4]} if name == "arrays" else xa[:4]
        res[name] = {"id": j.id, "state": final["state"], "epochs": len(final.get("history") or []),
                     "events": len(j.events()), "history": len(j.history()),
                     "pred": np.asarray(loaded.predict(x, verbose=0)).ravel().tolist(),
                     "n_weights": len(loaded.get_weights()), "same_arch": len(m.get_weights())}
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
