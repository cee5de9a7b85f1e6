"""The README's first command: `traind up --example` starts its own Redis, a supervisor and a worker, trains the
seed note's workflow to an early stop, and shuts everything down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_up_example_trains_to_an_early_stop(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    res = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "up", "--example", "--storage", str(tmp_path / "data"),
         "--timeout", "400"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=500,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "succeeded" in out and "stopped early" in out, out[-4000:]
    jobs = list((tmp_path / "data" / "jobs").iterdir())
    assert len(jobs) == 1 and (jobs[0] / "best.weights.h5").exists()
    # nothing left running: the embedded redis-server went down with the stack
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True)
    assert ps.stdout.strip() == "", ps.stdout
