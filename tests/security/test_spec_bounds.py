"""Issue 21.8 (spec side): non-finite numbers and absurd counts are refused at submit, through a real ``traind serve``
(the JSON body may carry ``-Infinity``/``NaN``, which Python's JSON parser accepts), and by the worker when planted.
``initial_value_threshold: -Infinity`` used to be accepted and fail the job with "Unknown format code 'g'";
``steps_per_epoch: 1e30`` was accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.contract.sections import MAX_COUNT
from tests.security.helpers import failed_with, good_spec, plant_job, run_burst
from tests.security.serve_helpers import ServeProcess

# (JSON text of a section, the problem named)
REFUSED = [
    ('"checkpoint": {"initial_value_threshold": -Infinity}',
     "checkpoint.initial_value_threshold: Input should be a finite number; received -inf"),
    ('"early_stopping": {"baseline": NaN}', "early_stopping.baseline: Input should be a finite number; received nan"),
    ('"lr_on_plateau": {"min_lr": Infinity}', "lr_on_plateau.min_lr: Input should be a finite number; received inf"),
    ('"fit": {"epochs": 2, "class_weight": {"0": Infinity}}', "fit.class_weight.0: Input should be a finite number"),
    ('"fit": {"epochs": 2, "steps_per_epoch": 1e30}', "fit.steps_per_epoch: "),
    ('"fit": {"epochs": 2, "steps_per_epoch": 1000000000000000000000000000000}',
     f"fit.steps_per_epoch: Input should be less than or equal to {MAX_COUNT}"),
    ('"fit": {"epochs": 2, "validation_steps": 10000000000}',
     f"fit.validation_steps: Input should be less than or equal to {MAX_COUNT}"),
    ('"checkpoint": {"save_freq": 100000000000}',
     f"save_freq: expected 'epoch' or a number of batches in 1..{MAX_COUNT}"),
]


def _body(section: str) -> bytes:
    """A submit body: a good spec whose section named in ``section`` (JSON text, may hold -Infinity) is replaced."""
    key, _, text = section.partition(":")
    parts = {k: json.dumps(v) for k, v in good_spec("bounded").items()}
    parts[json.loads(key)] = text
    return ('{"spec": {' + ", ".join(f"{json.dumps(k)}: {v}" for k, v in parts.items()) + "}}").encode()


@pytest.mark.parametrize(("section", "problem"), REFUSED)
def test_refused_at_submit_through_serve(section: str, problem: str, serve_proc: ServeProcess) -> None:
    with serve_proc.client() as c:
        resp = c.post("/api/v1/jobs", content=_body(section), headers={"Content-Type": "application/json"})
        assert resp.status_code == 422, resp.text
        problems = resp.json()["detail"]["problems"]
        assert any(problem in p for p in problems), problems
        assert c.get("/api/v1/jobs").json()["total"] == 0  # nothing recorded
        resp = c.post("/api/v1/jobs", content=_body('"fit": {"epochs": 2, "steps_per_epoch": 1000000000}'),
                      headers={"Content-Type": "application/json"})
        assert resp.status_code == 201, resp.text  # the bound itself is accepted


def test_planted_non_finite_threshold_fails_the_job_clearly(r: redis.Redis, redis_url: str,
                                                            storage_dir: Path) -> None:
    spec: dict[str, Any] = good_spec("planted-inf", checkpoint={"initial_value_threshold": float("-inf")})
    jid = plant_job(r, spec)  # json.dumps writes -Infinity
    run_burst(redis_url, storage_dir)
    error = failed_with(r, jid)
    assert "checkpoint.initial_value_threshold: Input should be a finite number; received -inf" in error, error
    assert "Unknown format code" not in error
