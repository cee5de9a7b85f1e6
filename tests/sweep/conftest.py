"""Sweep test pieces: a tiny sweep over tests.models' slow regression (15 batches an epoch), a CLI runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.cli import main


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
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture()
def cli(redis_url: str, storage_dir: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``traind ARGS --redis-url URL --storage DIR`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main([*args, "--redis-url", redis_url, "--storage", str(storage_dir)])
        out, err = capsys.readouterr()
        return rc, out, err

    return run
