"""The chaos tool end to end at smoke size: its own redis-server, supervisor and workers, two real SIGKILLs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos import main

pytestmark = pytest.mark.fault


def test_chaos_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "chaos.json"
    rc = main(["--jobs", "2", "--workers", "2", "--kills", "2", "--epochs", "20", "--seed", "3",
               "--workdir", str(tmp_path / "run"), "--deadline-s", "240", "--json", str(out)])
    printed = capsys.readouterr().out
    s = json.loads(out.read_text())
    assert rc == 0, printed
    assert s["ok"] and s["all_terminal"] and not s["double_trained"], printed
    assert s["jobs"] == {"total": 2, "succeeded": 2, "failed": 0, "cancelled": 0, "lost": 0}
    assert s["kills_done"] == 2 and s["sampler"]["samples"] > 0
    # Every kill hit a running attempt, which the supervisor requeued within the TTL plus a pass or two.
    assert [k["outcome"] for k in s["kills"]] == ["requeued", "requeued"], printed
    assert s["restarts_total"] == 2
    assert all(0 < k["detect_ms"] <= (s["config"]["lease_ttl_s"] + 1.5) * 1000 for k in s["kills"]), printed
    assert "result          OK" in printed
