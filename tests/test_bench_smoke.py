"""Every benchmark runs end to end at smoke size and writes its tables and JSON (the numbers are not checked)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

# (module, extra smoke arguments): the plain-RQ side of bench.detection waits 15 minutes in a real run; here it
# only has to start, kill and report "still waiting at cap".
BENCHES = [
    ("queue", []),
    ("memory", []),
    ("overhead", []),
    ("resume", []),
    ("work_lost", []),
    ("detection", ["--rq-cap-s", "3"]),
    ("serve", []),
    ("failover", []),
    ("cli_latency", []),
    ("s3", []),  # its own moto S3 server; upload, resume-from-S3 and cache tables (no worker processes)
]


@pytest.mark.slow  # ~1.5-2 min on 2 cores: the six scripts start about ten TensorFlow worker processes
@pytest.mark.parametrize(("name", "extra"), BENCHES, ids=[b[0] for b in BENCHES])
def test_bench_smoke(name: str, extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = importlib.import_module(f"bench.{name}")
    out = tmp_path / f"{name}.json"
    rc = mod.main(["--smoke", "--json", str(out), "--workdir", str(tmp_path / "work"), *extra])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "## " in printed, printed[-2000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == name
    assert data["environment"]["smoke"] is True and data["environment"]["cores"]
    assert data["results"] and data["tables"]
