"""Issue 21.3: the submit-time model check is bounded. A 3 KB inline config (Input 4096 -> Dense 65536: 268M weights,
1 GB) made ``traind serve`` build the model (12 s, RSS +3.6 GB, kept); now it is measured before anything is
allocated and refused, against a real ``traind serve`` process and redis-server."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.security.serve_helpers import ServeProcess

ATTACK_PARAMS = 4096 * 65536 + 65536


def _config(inputs: tuple[int, ...], layers: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, compile config) of a small functional model, as ``client.fit`` would ship them."""
    import keras

    x = inp = keras.Input(inputs)
    for layer in layers:
        x = layer(x)
    model = keras.Model(inp, x)
    model.compile(optimizer="adam", loss="mse")
    return keras.saving.serialize_keras_object(model), model.get_compile_config()


def _spec(name: str, config: dict[str, Any], compile_config: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "model": {"config": config, "compile": compile_config},
            "data": {"loader": "examples.regression:load_data"}, "fit": {"epochs": 1}}


def _attack() -> dict[str, Any]:
    """The 268M-weight model, written by editing a 3-unit Dense's config (nothing large is built here)."""
    import keras

    config, compile_config = _config((4096,), [keras.layers.Dense(3, name="wide")])
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer["config"]["units"] = 65536
    spec = _spec("wide", config, compile_config)
    assert len(json.dumps(config)) < 4000  # a few KB describe a 1 GB model
    return spec


def test_huge_inline_config_is_refused_before_serve_builds_it(serve_proc: ServeProcess) -> None:
    import keras

    small = _spec("small", *_config((4,), [keras.layers.Dense(8), keras.layers.Dense(1)]))
    with serve_proc.client() as c:
        resp = c.post("/api/v1/jobs", json={"spec": small})  # imports Keras in serve: its memory from here on
        assert resp.status_code == 201, resp.text
        rss0 = serve_proc.rss_mib()
        attack = _attack()
        for _ in range(3):
            resp = c.post("/api/v1/jobs", json={"spec": attack})
            assert resp.status_code == 422, resp.text
            [problem] = resp.json()["detail"]["problems"]
            assert problem.startswith(f"model.config: {ATTACK_PARAMS:,} parameters exceeds "
                                      "TRAIND_MAX_MODEL_PARAMS=100000000 (counted before building"), problem
        grown = serve_proc.rss_mib() - rss0
        assert grown < 100, f"serve's RSS grew by {grown:.0f} MiB: the model was built"
        assert c.get("/api/v1/jobs").json()["total"] == 1  # nothing recorded for the refused ones


def test_the_limit_is_a_setting(procs: Any, redis_url: str, storage_dir: Path) -> None:
    import keras

    from tests.security.serve_helpers import start_serve

    sp = start_serve(procs, redis_url, storage_dir, TRAIND_MAX_MODEL_PARAMS="40")
    spec = _spec("small", *_config((4,), [keras.layers.Dense(8), keras.layers.Dense(1)]))  # 49 weights
    with sp.client() as c:
        resp = c.post("/api/v1/jobs", json={"spec": spec})
        assert resp.status_code == 422
        assert resp.json()["detail"]["problems"][0].startswith("model.config: 49 parameters exceeds "
                                                                "TRAIND_MAX_MODEL_PARAMS=40")


def _rss_mib() -> float:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_model_cost_counts_without_allocating() -> None:
    import keras

    from jobs.keras.fitcheck import model_cost

    L = keras.layers
    config, _ = _config((32, 32, 3), [L.Conv2D(16, 3), L.BatchNormalization(), L.Flatten(), L.Dense(4)])
    built = keras.saving.deserialize_keras_object(copy.deepcopy(config), safe_mode=True)  # it consumes its input
    cost = model_cost(config, {})
    assert cost is not None and cost.params == built.count_params() == 58_116
    assert cost.flops >= 448 * 30 * 30  # the convolution's weights slide over 30 x 30 positions
    rss0 = _rss_mib()
    cost = model_cost(_attack()["model"]["config"], {})
    assert cost is not None and cost.params == ATTACK_PARAMS
    keras.Variable(1.0)  # deferred variables are forgotten, not initialized at the next scope's end
    with keras.StatelessScope():
        pass
    assert _rss_mib() - rss0 < 100


@pytest.mark.parametrize("side", [4096])
def test_costly_activations_skip_the_probe_not_the_job(side: int, redis_url: str, storage_dir: Path) -> None:
    """Few weights, huge activations (50M values per sample): accepted without the zero-batch probe, memory flat."""
    import keras

    from jobs.client import Client

    client = Client(redis_url=redis_url, storage=storage_dir)
    spec = _spec("wide-input", *_config((side, side, 3), [keras.layers.Conv2D(1, 1)]))
    rss0 = _rss_mib()
    handle = client.submit(spec)
    assert handle.state.value == "queued"
    assert _rss_mib() - rss0 < 150  # one sample of it would be 200 MB in, 67 MB out


def test_a_layer_that_cannot_be_measured_is_refused(redis_url: str, storage_dir: Path) -> None:
    from jobs.client import Client
    from jobs.errors import SpecError
    from jobs.settings import ClientSettings
    from tests.security.layers import ConcreteBias

    settings = ClientSettings(allowed_modules=["examples", "tests.security.layers"])
    client = Client(redis_url=redis_url, storage=storage_dir, settings=settings)
    config, compile_config = _config((4,), [ConcreteBias(), keras_dense(1)])
    spec = _spec("concrete", config, compile_config)
    spec["model"]["custom_objects"] = ["tests.security.layers:ConcreteBias"]
    with pytest.raises(SpecError, match="model.config: a layer of this model needs concrete values to be built, so "
                                        "its size cannot be measured before building it; give a model.builder"):
        client.submit(spec)


def keras_dense(units: int) -> Any:
    import keras

    return keras.layers.Dense(units)
