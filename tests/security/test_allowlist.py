"""Issue 5.2: only allowlisted code runs. Refused at submit, refused again by the worker when planted in Redis,
nothing imported; Keras configs load in safe mode only; uploaded arrays never carry pickles.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.contract.queue import queue_key
from jobs.contract.refs import resolve_ref
from jobs.errors import SpecError, StorageError
from tests.security.helpers import QUEUE, failed_with, good_spec, plant_job, run_burst

ROOT = Path(__file__).resolve().parents[2]
EVIL = "tests.security.evil_mod"
MALFORMED = "expected 'package.module:function' from a module under TRAIND_ALLOWED_MODULES (identifiers only"
REFUSED: dict[str, str] = {
    "os:system": "module 'os' is not allowed",
    "builtins:eval": "module 'builtins' is not allowed",
    "subprocess:run": "module 'subprocess' is not allowed",
    "examples/../os:system": MALFORMED,
    "..examples:x": MALFORMED,
    "examples.regression:build_model; rm -rf": MALFORMED,
    "examples.regression:build_model\n": MALFORMED,
    f"{EVIL}:build_model": f"module '{EVIL}' is not allowed",
}
WHERE = ("model.builder", "data.loader", "model.custom_objects.0")


def _with_ref(ref: str, where: str) -> dict[str, Any]:
    spec = good_spec(f"ref-{where}")
    if where == "model.builder":
        spec["model"]["builder"] = ref
    elif where == "data.loader":
        spec["data"]["loader"] = ref
    else:
        spec["model"]["custom_objects"] = [ref]
    return spec


def _nothing_recorded(r: redis.Redis) -> None:
    assert r.zcard(keys.JOBS_INDEX) == 0, "a refused job was recorded in traind:jobs"
    assert r.llen(queue_key(QUEUE)) == 0, "a refused job was queued"
    assert not list(r.scan_iter("rq:job:*")), "a refused job left an RQ job"


def test_evil_module_is_armed(marker: Path) -> None:
    """Control: importing the planted module really writes the marker (checked in a child process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", f"import {EVIL}"], cwd=ROOT, env=env, check=True, timeout=60)
    assert marker.read_text() == f"imported {EVIL}\n"
    marker.unlink()


@pytest.mark.parametrize("ref", list(REFUSED))
def test_refused_at_submit(ref: str, client: Client, r: redis.Redis, marker: Path) -> None:
    """Builder, loader and custom object refused at once, each named, with the allowlist setting in the message."""
    spec = good_spec("refused")
    spec["model"]["builder"] = ref
    spec["data"]["loader"] = ref
    spec["model"]["custom_objects"] = [ref]
    with pytest.raises(SpecError) as ei:
        client.submit(spec)
    msg = str(ei.value)
    assert msg.startswith("invalid job spec (3 problem(s)):"), msg
    for where in WHERE:
        assert f"  - {where}: " in msg, msg
    assert REFUSED[ref] in msg and "TRAIND_ALLOWED_MODULES" in msg, msg
    assert repr(ref) in msg or REFUSED[ref] != MALFORMED, "a malformed reference must be quoted back"
    _nothing_recorded(r)
    assert not marker.exists()


def test_refused_at_worker_when_planted_in_redis(
    r: redis.Redis, redis_url: str, storage_dir: Path, marker: Path
) -> None:
    """Someone with Redis write access bypasses the client: the worker re-validates and imports nothing."""
    planted = {plant_job(r, _with_ref(ref, where)): (ref, where) for ref in REFUSED for where in WHERE}
    modules_before = set(sys.modules)
    run_burst(redis_url, storage_dir)
    for jid, (ref, where) in planted.items():
        error = failed_with(r, jid)
        assert error.startswith("invalid spec: invalid job spec (1 problem(s)):"), error
        assert f"{where}: " in error and REFUSED[ref] in error and "TRAIND_ALLOWED_MODULES" in error, error
    assert EVIL not in sys.modules
    new = {m for m in set(sys.modules) - modules_before if m.startswith(("tests.security", "subprocess", "os."))}
    assert not new, f"the worker imported {sorted(new)}"
    assert not marker.exists(), marker.read_text()


def test_reexported_callable_of_an_allowed_module_is_refused(
    r: redis.Redis, redis_url: str, storage_dir: Path, marker: Path
) -> None:
    """Allowing a module allows what it *defines*, not what it imports (``from subprocess import run``)."""
    import tests.security.reexport as reexport

    assert reexport.run is subprocess.run  # the attack surface is real
    allowed = ["examples", "tests.security.reexport"]
    with pytest.raises(SpecError, match=r"defined in module 'subprocess'"):
        resolve_ref("tests.security.reexport:run", allowed, "data.loader")
    builder = plant_job(r, good_spec("system", model={
        "builder": "tests.security.reexport:system", "builder_kwargs": {"command": f"touch {marker}"}}))
    loader = plant_job(r, good_spec("run", data={
        "loader": "tests.security.reexport:run", "loader_kwargs": {"args": ["touch", str(marker)]}}))
    run_burst(redis_url, storage_dir, allowed_modules=allowed)
    e1, e2 = failed_with(r, builder), failed_with(r, loader)
    assert "model.builder: tests.security.reexport:system is defined in module 'posix'" in e1, e1
    assert "data.loader: tests.security.reexport:run is defined in module 'subprocess'" in e2, e2
    for e in (e1, e2):
        assert "expected a function or class defined in an allowed module (TRAIND_ALLOWED_MODULES)" in e, e
    assert not marker.exists(), "a re-exported callable ran"


def test_lambda_layer_is_refused_in_safe_mode(
    client: Client, r: redis.Redis, redis_url: str, storage_dir: Path, marker: Path
) -> None:
    """A Lambda layer's bytecode is never deserialized: ``client.fit`` refuses it at submit (it rebuilds the model in
    safe mode as a worker would), and a spec carrying the same config, submitted directly, fails on the worker."""
    import keras

    from examples.regression import load_data
    from jobs.keras.modelio import serialize_model

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x, y = load_data(n=64)
    with pytest.raises(SpecError, match="a worker could not rebuild this model") as ei:
        client.fit(model, x, y, epochs=1, name="lambda")
    assert "safe_mode=False" in str(ei.value)
    _nothing_recorded(r)
    spec = good_spec("lambda", model=serialize_model(model, client.storage))
    with pytest.raises(SpecError, match="a worker could not rebuild this model"):
        client.submit(spec)  # a spec carrying the config is refused at submit the same way
    _nothing_recorded(r)
    job = _submit_unchecked(client, spec)  # the worker's own defence, for a spec written by other means
    run_burst(redis_url, storage_dir)
    error = failed_with(r, job.id)
    assert error.startswith("model.config could not be loaded in safe mode: ValueError:"), error
    assert "lambda" in error.lower() and "safe_mode=False" in error, error


def test_inline_config_cannot_name_other_modules(
    client: Client, r: redis.Redis, redis_url: str, storage_dir: Path
) -> None:
    """A Keras config naming a class or function in a non-Keras module (layer, loss) imports nothing."""
    import keras

    from examples.regression import build_model

    model = build_model(units=4)
    config = keras.saving.serialize_keras_object(model)
    compile_config = model.get_compile_config()
    dense = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")
    dense.update({"module": EVIL, "class_name": "EvilLayer", "registered_name": None})
    layer_spec = good_spec("evil-layer", model={"config": config, "compile": compile_config})
    with pytest.raises(SpecError, match="Keras could not locate class 'EvilLayer'"):
        client.submit(layer_spec)  # refused at submit (rebuilt in safe mode there), importing nothing
    layer_job = _submit_unchecked(client, layer_spec)  # and the worker refuses a spec written by other means
    config = keras.saving.serialize_keras_object(model)
    compile_config = dict(compile_config, loss={"module": "os", "class_name": "function", "config": "system",
                                                "registered_name": "system"})
    loss_spec = good_spec("evil-loss", model={"config": config, "compile": compile_config})
    with pytest.raises(SpecError):
        client.submit(loss_spec)
    loss_job = _submit_unchecked(client, loss_spec)
    run_burst(redis_url, storage_dir)
    e1, e2 = failed_with(r, layer_job.id), failed_with(r, loss_job.id)
    assert e1.startswith("model.config could not be loaded in safe mode:") and "'EvilLayer'" in e1, e1
    assert e2.startswith("model.config could not be loaded in safe mode:") and "'system'" in e2, e2
    assert EVIL not in sys.modules


def _submit_unchecked(client: Client, spec: dict) -> Any:
    """Record and enqueue a spec past the client's submit-time model check (static validation only), as an older
    client or a hand-written Redis entry would: what the worker's own safe-mode load must refuse."""
    return client._submit(client._validate(spec), None)


class Snitch:
    """Pickling it (not even unpickling) touches the marker: shows whether the client serialized objects."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        self.path.touch()
        return (str, ("snitch",))


def test_object_array_upload_is_refused_client_side(
    client: Client, r: redis.Redis, storage_dir: Path, marker: Path
) -> None:
    """``client.fit`` refuses object arrays before serializing anything (np.savez would pickle them)."""
    from examples.regression import build_model

    x = np.array([Snitch(marker), 1.0], dtype=object)
    with pytest.raises(StorageError) as ei:
        client.fit(build_model(units=4), x, np.zeros((2, 1), "float32"), epochs=1)
    assert str(ei.value) == "upload: array 'x' has dtype object; only numeric/bool/str arrays are accepted"
    assert not marker.exists(), "the object array was pickled client-side before being refused"
    assert not list((storage_dir / "uploads").glob("*")) if (storage_dir / "uploads").exists() else True
    _nothing_recorded(r)


class Payload:
    """Unpickling calls ``Path.touch(marker)``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (Path(self.path),))


def _plant_pickled_npz(storage_dir: Path, marker: Path) -> str:
    buf = io.BytesIO()
    np.savez(buf, x=np.array([Payload(marker)], dtype=object), y=np.zeros((1, 1), "float32"))
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    (storage_dir / "uploads").mkdir(exist_ok=True)
    (storage_dir / "uploads" / f"{digest}.npz").write_bytes(data)
    return digest


def test_planted_pickled_npz_is_refused_at_the_worker(
    client: Client, r: redis.Redis, redis_url: str, storage_dir: Path, marker: Path
) -> None:
    """An .npz with a pickled object array, planted in storage under its correct sha256: loaded with
    allow_pickle=False, so the job fails and the pickle never runs (as data arrays or as initial weights).
    """
    digest = _plant_pickled_npz(storage_dir, marker)
    with np.load(storage_dir / "uploads" / f"{digest}.npz", allow_pickle=True) as z:
        assert z["x"].dtype == object  # control: it really is a pickled object array
    assert marker.exists()
    marker.unlink()
    as_data = client.submit(good_spec("npz-data", data={"arrays": digest}))
    as_weights = client.submit(good_spec("npz-weights", model={
        "builder": "examples.regression:build_model", "initial_weights": digest}))
    run_burst(redis_url, storage_dir)
    for job in (as_data, as_weights):
        error = failed_with(r, job.id)
        assert error == f"upload {digest} could not be loaded safely: Object arrays cannot be loaded when " \
                        "allow_pickle=False", error
    assert not marker.exists(), "the planted pickle ran"
