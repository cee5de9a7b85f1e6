"""Specs with an inline Keras ``model.config`` (YAML/JSON via ``traind submit``, ``Client.submit(dict)``, HTTP
``POST /api/v1/jobs``) are rebuilt in safe mode at submit, as ``client.fit`` models are: a model a worker could not
rebuild, or a ``monitor`` it would never log, is refused before anything is queued."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.errors import SpecError
from tests.conftest import ROOT
from tests.parity import objects
from tests.parity.conftest import ALLOWED, run_worker
from tests.serve.conftest import Served, served  # noqa: F401 - the served fixture, for the HTTP case

X, Y = objects.regression(80)
UNDECLARED = "model: a worker could not rebuild this model: Keras could not locate class 'Scale'"


def config_spec(client: Client, model: keras.Model, **over: Any) -> dict[str, Any]:
    """A submit spec with the model inline, as a user writes it to YAML/JSON (no ``client.fit``)."""
    digest = client.storage.ensure().put_arrays({"x": X, "y": Y})
    spec: dict[str, Any] = {
        "name": "inline",
        "model": {"config": json.loads(json.dumps(keras.saving.serialize_keras_object(model))),
                  "compile": json.loads(json.dumps(model.get_compile_config()))},
        "data": {"arrays": digest},
        "fit": {"epochs": 2, "batch_size": 16, "validation_split": 0.25, "shuffle": False},
    }
    for k, v in over.items():
        spec[k] = {**spec[k], **v} if isinstance(v, dict) and isinstance(spec.get(k), dict) else v
    return spec


def _nothing_queued(r: redis.Redis) -> None:
    assert r.zcard(keys.JOBS_INDEX) == 0 and r.keys("rq:*") == [], r.keys("*")


def refused(client: Client, r: redis.Redis, spec: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as ei:
        client.submit(spec)
    _nothing_queued(r)
    return str(ei.value)


def test_undeclared_custom_layer_refused_declared_one_trains(client: Client, r: redis.Redis) -> None:
    keras.utils.set_random_seed(0)
    spec = config_spec(client, objects.dense(scale=True))
    # Scale is registered in this process (tests.parity.objects is imported): hidden, as on a fresh worker.
    msg = refused(client, r, copy.deepcopy(spec))
    assert UNDECLARED in msg and "custom_objects" in msg, msg
    spec["model"]["custom_objects"] = ["tests.parity.objects:Scale"]
    job = client.submit(spec)
    run_worker(client)
    st = job.status(with_history=True)
    assert st["state"] == "succeeded", st.get("error")
    assert [h["epoch"] for h in st["history"]] == [1, 2] and st["monitor"] == "val_loss"


def test_monitor_typo_refused_with_did_you_mean(client: Client, r: redis.Redis) -> None:
    msg = refused(client, r, config_spec(client, objects.dense(), checkpoint={"monitor": "val_los"},
                                         early_stopping={"monitor": "val_mea"}))
    assert "checkpoint.monitor: 'val_los' is not a metric this job logs" in msg and "did you mean 'val_loss'?" in msg
    assert "early_stopping.monitor: 'val_mea' is not a metric" in msg and "did you mean 'val_mae'?" in msg
    msg = refused(client, r, config_spec(client, objects.classifier(), lr_on_plateau={"monitor": "val_acc"}))
    assert "lr_on_plateau.monitor: 'val_acc' is not a metric" in msg and "did you mean 'val_accuracy'?" in msg


def test_lambda_layer_refused_in_safe_mode(client: Client, r: redis.Redis) -> None:
    m = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    msg = refused(client, r, config_spec(client, m))
    assert "model: a worker could not rebuild this model" in msg and "Lambda" in msg and "safe_mode" in msg, msg


def test_cli_submit_of_a_bad_inline_config_fails(client: Client, r: redis.Redis, redis_url: str, storage_dir: Path,
                                                 tmp_path: Path) -> None:
    path = tmp_path / "inline.yaml"
    path.write_text(json.dumps(config_spec(client, objects.dense(scale=True))))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    res = subprocess.run([sys.executable, "-m", "daemon.cli", "submit", str(path), "--redis-url", redis_url,
                          "--storage", str(storage_dir)], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={**env, "TRAIND_ALLOWED_MODULES": ",".join(ALLOWED)})
    assert res.returncode == 2 and "nothing was submitted" in res.stderr, res.stderr
    # A fresh process never imported tests.parity.objects: Keras cannot locate the class either.
    assert "a worker could not rebuild this model: Keras could not locate class" in res.stderr, res.stderr
    _nothing_queued(r)


def test_http_submit_of_a_bad_inline_config_is_422(served: Served, client: Client,  # noqa: F811
                                                   r: redis.Redis) -> None:
    spec = config_spec(client, objects.dense(), checkpoint={"monitor": "val_los"})
    with served.client() as c:
        resp = c.post("/api/v1/jobs", json={"spec": spec})
    assert resp.status_code == 422, resp.text
    [problem] = resp.json()["detail"]["problems"]
    assert "checkpoint.monitor: 'val_los' is not a metric" in problem and "did you mean 'val_loss'?" in problem
    _nothing_queued(r)
