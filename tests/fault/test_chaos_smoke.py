"""The chaos tool end to end at smoke size: its own redis-server, supervisor and workers, two real SIGKILLs.

Kills are triggered by observed progress (a job running mid-epoch, or writing a checkpoint), and every batch of the
jobs sleeps 20 ms, so a job lasts at least 20 epochs x 40 batches x 20 ms = 16 s however idle the machine is: both
kills find a running job at any load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos import main

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]


def test_chaos_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "chaos.json"
    rc = main(["--jobs", "2", "--workers", "2", "--kills", "2", "--epochs", "20", "--batch-delay-s", "0.02",
               "--min-gap-s", "0", "--max-gap-s", "0.5", "--seed", "3", "--workdir", str(tmp_path / "run"),
               "--deadline-s", "600", "--json", str(out)])
    printed = capsys.readouterr().out
    s = json.loads(out.read_text())
    assert rc == 0, printed
    assert s["ok"] and s["all_terminal"] and not s["double_trained"], printed
    assert s["jobs"] == {"total": 2, "succeeded": 2, "failed": 0, "cancelled": 0, "lost": 0}
    assert s["kills_done"] == 2 and s["sampler"]["samples"] > 0
    # Every kill hit a running attempt, which a supervisor requeued (once) after its lease lapsed; how fast is
    # bench/detection.py's question, not this test's.
    assert [k["outcome"] for k in s["kills"]] == ["requeued", "requeued"], printed
    assert s["restarts_total"] == 2
    assert all(k["detect_ms"] > 0 for k in s["kills"]), printed
    assert "result          OK" in printed
