"""Every benchmark runs end to end at smoke size and writes tables and JSON whose results make sense: the measured
quantities exist, are positive, and count what the run did (the numbers themselves are not judged at smoke size).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _pos(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_queue(r: dict[str, Any]) -> None:
    assert set(r["submit"]["rates"]) >= {"Client.submit (one by one)", "Client.submit_many (pipelined)"}
    assert all(_pos(x) for xs in r["submit"]["rates"].values() for x in xs), r["submit"]["rates"]
    assert all(_pos(x) for xs in r["list"]["times"].values() for x in xs), r["list"]["times"]
    assert r["supervisor"]["rows"] and all(_pos(row["step_ms"]) for row in r["supervisor"]["rows"])


def _check_memory(r: dict[str, Any]) -> None:
    assert len(r["samples"]) == r["jobs"] >= 1 and all(_pos(s["rss_mb"]) for s in r["samples"])
    assert _pos(r["baseline"]["rss_mb"]) and r["rows"]


def _check_overhead(r: dict[str, Any]) -> None:
    assert _pos(r["small"]["e2e_ratio"]) and r["small"]["rows"]
    assert r["breakdown"]["rows"] and len(r["breakdown"]["history_time_s"]) == r["breakdown"]["epochs"]


def _check_ckpt_scale(r: dict[str, Any]) -> None:
    rows = {row["variant"]: row for row in r["rows"]}
    assert set(rows) == {"keras-none", "host-copy", "keras-every-epoch", "traind-improving", "traind-not-improving",
                         "traind-not-improving-skip"}, rows
    assert all(_pos(row["epoch_s"]) and row["peak_rss_gb"] > 0 for row in rows.values())
    for v in ("traind-improving", "traind-not-improving"):
        assert _pos(rows[v]["stall_s"]) and _pos(rows[v]["bg_write_s"]) and _pos(rows[v]["bg_vs_raw_new"]), rows[v]
        assert _pos(rows[v]["idle_vs_raw_new"]) and rows[v]["raw_new_row"].endswith("n=15)"), rows[v]
    run = r["runs"][0]["runs"]
    assert run["traind-improving"]["ckpt_epochs"] and run["traind-improving"]["best_epoch"] >= 1


def _check_resume(r: dict[str, Any]) -> None:
    assert r["reps"] and all(_pos(x["total_s"]) and x["batch_seen"] >= 1 for x in r["reps"])
    assert _pos(r["model_load"]["model_load_s"])


def _check_work_lost(r: dict[str, Any]) -> None:
    assert r["kills"] and {k["policy"] for k in r["kills"]} == {"best", "latest"}
    assert all(k["epochs_redone"] >= 0 and k["epoch_done"] >= k["resumed_at"] for k in r["kills"]), r["kills"]


def _check_detection(r: dict[str, Any]) -> None:
    kills = r["traind"]["kills"]
    assert kills and r["traind"]["detect_s"]["n"] == len(kills)
    assert all(_pos(k["detect_s"]) for k in kills), kills
    assert r["rq"]["still_waiting_at_cap"] is True  # the 3 s cap: plain RQ has not noticed the kill yet


def _check_failover(r: dict[str, Any]) -> None:
    assert r["submit"]["rows"] and all(_pos(row["jobs_per_s"]) for row in r["submit"]["rows"])
    assert r["failover"]["rounds"] and all(_pos(x["kill_to_promoted_s"]) for x in r["failover"]["rounds"])


def _check_serve(r: dict[str, Any]) -> None:
    assert r["startup"] and all(_pos(x["to_healthz_s"]) for x in r["startup"])
    assert {row["viewers"] for row in r["viewers"]["rows"]} >= {0} and all(row["epochs"] >= 1
                                                                          for row in r["viewers"]["rows"])
    assert r["latency"]["rows"] and all(_pos(row["p50_ms"]) for row in r["latency"]["rows"])
    assert _pos(r["serve_rss_mb"])


def _check_s3(r: dict[str, Any]) -> None:
    up = r["upload"].values()
    assert up and all(_pos(v["traind_put_MBps"]) and _pos(v["raw_s3fs_put_MBps"]) for v in up)
    assert r["resume"] and all(_pos(v["s3_s"]) and _pos(v["local_s"]) for v in r["resume"].values())
    assert r["cache"] and all(_pos(x["data_load_s"]) for x in r["cache"]) and r["cache"][0]["fetched_from_s3"]


def _check_cli_latency(r: dict[str, Any]) -> None:
    timed = {k: v for k, v in r.items() if k != "goal"}
    assert timed and all(_pos(v["wall_s"]["median"]) and v["wall_s"]["n"] >= 1 for v in timed.values()), r
    assert _pos(r["goal"]["status_median_s"]) and isinstance(r["goal"]["met"], bool)


def _check_write_ceiling(r: dict[str, Any]) -> None:
    rows = {row["variant"]: row for row in r["rows"]}
    assert set(rows) - {"writer-file-isal", "lean-direct"} == {"sha256", "crc32", "writer-null", "writer-file",
                                                               "tree-null", "tree-file", "raw-new"}, rows
    assert all(_pos(row["mb_s"]) and _pos(row["vs_raw_new"]) for row in rows.values()), rows


# (module, extra smoke arguments, check of its results): the plain-RQ side of bench.detection waits 15 minutes in a
# real run; here it only has to start, kill and report "still waiting at cap".
BENCHES: list[tuple[str, list[str], Callable[[dict[str, Any]], None]]] = [
    ("queue", [], _check_queue),
    ("memory", [], _check_memory),
    ("overhead", [], _check_overhead),
    ("ckpt_scale", [], _check_ckpt_scale),  # one variant per process: six short TensorFlow processes
    ("resume", [], _check_resume),
    ("work_lost", [], _check_work_lost),
    ("detection", ["--rq-cap-s", "3"], _check_detection),
    ("failover", [], _check_failover),
    ("cli_latency", [], _check_cli_latency),
    ("write_ceiling", [], _check_write_ceiling),  # no TensorFlow: numpy arrays through the checkpoint writer
    ("serve", [], _check_serve),
    ("s3", [], _check_s3),  # its own moto S3 server; upload, resume-from-S3 and cache tables (no worker processes)
]


@pytest.mark.slow  # ~2-4 min on 2 cores: the scripts start about ten TensorFlow worker processes
@pytest.mark.parametrize(("name", "extra", "check"), BENCHES, ids=[b[0] for b in BENCHES])
def test_bench_smoke(name: str, extra: list[str], check: Callable[[dict[str, Any]], None], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    mod = importlib.import_module(f"bench.{name}")
    out = tmp_path / f"{name}.json"
    rc = mod.main(["--smoke", "--json", str(out), "--workdir", str(tmp_path / "work"), *extra])
    assert rc == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["benchmark"] == name
    env = data["environment"]
    assert env["smoke"] is True and env["cores"] and env["command"].startswith(f"python -m bench.{name} --smoke")
    assert len(env["git"]["commit"]) == 40 and isinstance(env["git"]["dirty"], bool), env.get("git")
    assert data["tables"] and all(t in printed for t in data["tables"]), "every table is printed as recorded"
    check(data["results"])
