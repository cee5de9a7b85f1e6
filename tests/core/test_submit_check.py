"""Issue 22 item 4: `traind submit` checks a builder spec's monitors where the builder can be imported (as
`client.fit` checks a model), and says that the worker checks them where it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis
import yaml

from jobs.contract import keys
from tests.conftest import ROOT


def _submit(spec: dict[str, object], tmp_path: Path, redis_url: str, storage_dir: Path,
            allowed: str = "examples") -> subprocess.CompletedProcess[str]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    return subprocess.run([sys.executable, "-m", "daemon.cli", "submit", str(path), "--redis-url", redis_url,
                           "--storage", str(storage_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**env, "TRAIND_ALLOWED_MODULES": allowed})


def test_a_misspelt_monitor_of_an_importable_builder_is_refused(tmp_path: Path, redis_url: str, storage_dir: Path,
                                                               r: redis.Redis) -> None:
    spec = yaml.safe_load((ROOT / "examples" / "regression.yaml").read_text())
    spec["checkpoint"]["monitor"] = "val_los"
    res = _submit(spec, tmp_path, redis_url, storage_dir)
    assert res.returncode == 2, res.stderr
    assert "checkpoint.monitor: 'val_los' is not a metric this job logs" in res.stderr, res.stderr
    assert "did you mean 'val_loss'?" in res.stderr and "nothing was submitted" in res.stderr
    assert r.zcard(keys.JOBS_INDEX) == 0


def test_a_builder_not_importable_here_is_submitted_with_a_note(tmp_path: Path, redis_url: str, storage_dir: Path,
                                                                r: redis.Redis) -> None:
    spec = yaml.safe_load((ROOT / "examples" / "regression.yaml").read_text())
    spec["model"]["builder"] = "teammodels.regression:build_model"  # lives on the workers only
    res = _submit(spec, tmp_path, redis_url, storage_dir, allowed="examples,teammodels")
    assert res.returncode == 0, res.stderr
    assert "note: model.builder teammodels.regression:build_model cannot be imported here" in res.stderr
    assert "checked on the worker" in res.stderr and r.zcard(keys.JOBS_INDEX) == 1
