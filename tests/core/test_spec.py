"""Job spec validation: every problem named, typos get a suggestion, YAML/JSON both load."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.contract.spec import load_spec_file, parse_spec_text, validate_spec
from jobs.errors import SpecError
from jobs.keras.callbacks_spec import callbacks_to_spec

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "name": "t",
    "model": {"builder": "examples.regression:build_model"},
    "data": {"loader": "examples.regression:load_data"},
    "fit": {"epochs": 3},
}


def test_defaults_follow_keras_and_the_issue() -> None:
    spec = validate_spec(GOOD, allowed_modules=["examples"])
    assert spec.checkpoint.monitor == "val_loss" and spec.checkpoint.save_best_only is True
    # Issue 19: time-based step checkpoints on by default, and a lost attempt resumes from the newest one.
    assert spec.checkpoint.every_s == "auto" and spec.checkpoint.step_checkpoints
    assert spec.resume_from == "auto" and spec.resume_policy == "latest" and spec.max_restarts == 3
    epoch_only = validate_spec({**GOOD, "checkpoint": {"every_s": None}}, allowed_modules=["examples"])
    assert not epoch_only.checkpoint.step_checkpoints and epoch_only.resume_policy == "best"
    assert spec.resources.device == "cpu" and spec.resources.priority == "default"


def test_misspelt_field_names_the_field_and_the_nearest_valid_one() -> None:
    bad = {**GOOD, "early_stopping": {"monitor": "val_loss", "patience": 3, "restor_best_weights": True}}
    with pytest.raises(SpecError) as e:
        validate_spec(bad)
    msg = str(e.value)
    assert "early_stopping.restor_best_weights: unknown field; did you mean 'restore_best_weights'?" in msg


def test_every_problem_is_named_at_once() -> None:
    bad = {
        "name": "",
        "model": {"builder": "os:system"},
        "data": {"loader": "examples.regression:load_data", "arrays": "0" * 64},
        "fit": {"epochs": 0, "batch_size": "big", "validaton_split": 0.2},
        "checkpoint": {"mode": "sideways"},
        "resume_from": "yesterday",
    }
    with pytest.raises(SpecError) as e:
        validate_spec(bad, allowed_modules=["examples"])
    problems = e.value.problems
    joined = "\n".join(problems)
    for needle in ("name:", "fit.epochs", "fit.batch_size", "fit.validaton_split: unknown field; did you mean "
                   "'validation_split'?", "checkpoint.mode", "resume_from", "data: give exactly one of",
                   "module 'os' is not allowed"):
        assert needle in joined, f"{needle!r} missing from:\n{joined}"
    assert len(problems) >= 8
    assert "received 0" in joined  # says what it got, Keras style


def test_example_specs_load() -> None:
    for name in ("regression.yaml", "classifier.yaml"):
        spec = load_spec_file(ROOT / "examples" / name, allowed_modules=["examples"])
        assert spec.fit.epochs > 0
    reg = load_spec_file(ROOT / "examples" / "regression.yaml")
    assert reg.early_stopping is not None and reg.early_stopping.restore_best_weights is True


def test_json_spec_text_and_bad_yaml() -> None:
    import json

    assert validate_spec(parse_spec_text(json.dumps(GOOD))).name == "t"
    with pytest.raises(SpecError, match="not valid YAML/JSON"):
        parse_spec_text("name: [unclosed")
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec_text("- 1\n- 2")


def test_limits() -> None:
    with pytest.raises(SpecError, match="exceeds TRAIND_MAX_EPOCHS=10"):
        validate_spec({**GOOD, "fit": {"epochs": 11}}, max_epochs=10)
    huge = {**GOOD, "model": {**GOOD["model"], "builder_kwargs": {"blob": "x" * 5000}}}
    with pytest.raises(SpecError, match="exceeds TRAIND_MAX_SPEC_BYTES=2048"):
        validate_spec(huge, max_spec_bytes=2048)


def test_keras_callbacks_translate_to_spec_sections() -> None:
    import keras

    out = callbacks_to_spec([
        keras.callbacks.ModelCheckpoint("/tmp/x.weights.h5", save_weights_only=True, save_best_only=True,
                                        monitor="val_loss"),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True, min_delta=0.01),
        keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=2),
    ])
    assert out["checkpoint"] == {"monitor": "val_loss", "mode": "auto", "save_best_only": True,
                                 "save_weights_only": True}
    assert out["early_stopping"]["patience"] == 3 and out["early_stopping"]["restore_best_weights"] is True
    assert out["early_stopping"]["min_delta"] == pytest.approx(0.01)
    assert out["lr_on_plateau"]["factor"] == 0.5
    with pytest.raises(SpecError, match="LambdaCallback cannot be sent to a worker"):
        callbacks_to_spec([keras.callbacks.LambdaCallback()])
