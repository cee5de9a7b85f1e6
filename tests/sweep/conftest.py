"""Sweep test pieces: a tiny job over tests.models' slow regression (15 batches an epoch); the CLI runner of
tests/test_cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.test_cli import cli as cli  # noqa: F401 - the CLI runner fixture (in-process, real Redis)
from tests.test_cli import write_spec


def tiny_job(epochs: int = 3, batch_delay_s: float = 0.03) -> dict[str, Any]:
    return {
        "name": "tiny",
        "model": {"builder": "tests.models:slow_regression",
                  "builder_kwargs": {"batch_delay_s": batch_delay_s, "learning_rate": 0.05, "units": 8}},
        "data": {"loader": "tests.models:load_data"},
        "fit": {"epochs": epochs, "batch_size": 32, "validation_split": 0.25, "seed": 3},
        "checkpoint": {"monitor": "val_loss", "save_weights_only": True, "keep_last": 2},
    }


def sweep_file(tmp_path: Path, data: dict[str, Any], name: str = "sweep.yaml") -> Path:
    return write_spec(tmp_path, data, name)
