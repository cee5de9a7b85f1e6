"""How fast the CLI answers: ``traind status ID`` (and ``list``, ``logs``) wall time over N runs, next to
``rq info`` (the reference a user compares with) and the floors below them (``python -c pass``, ``import redis``).

Each command runs as a fresh process, as a user types it, ``--reps`` times after one untimed warm-up (page cache),
the commands interleaved round-robin so that changing load on a shared machine hits them alike. The table gives
median, p95 and min wall time plus the median CPU time (user+sys) of the child, which load changes less than wall
time. ``--before DIR`` adds ``status ID`` run from another checkout (e.g. the commit before the lazy imports) for a
same-run comparison. Goal: ``traind status ID`` median <= 0.3 s.

    git archive 6b72dde | tar -x -C /tmp/traind-before    # optional: the code before the change
    python -m bench.cli_latency [--reps 30] [--before /tmp/traind-before]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import _util as u
from jobs.contract.events import EventKind

GOAL_S = 0.3


def _timed(argv: list[str], env: dict[str, str], cwd: str | None = None) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run; raises if the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.decode(errors='replace')[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _body(run: u.Run) -> None:
    reps = 3 if run.args.smoke else run.args.reps
    srv = u.start_redis(run)
    from jobs.client import Client

    storage = run.dir / "storage"
    client = Client(settings=u.client_settings(srv.url, storage))
    job = client.submit({"name": "latency", "model": {"builder": "examples.regression:build_model"},
                         "data": {"loader": "examples.regression:load_data"}, "fit": {"epochs": 3}})
    for i in range(20):
        client.store.add_event(job.id, EventKind.NOTE, f"event {i}")
    # What a user's shell has: the URL and storage dir exported, nothing else of traind's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    env.update({"TRAIND_REDIS_URL": srv.url, "TRAIND_STORAGE_DIR": str(storage), "PYTHONPATH": str(u.ROOT)})
    traind = shutil.which("traind")
    rq = shutil.which("rq")
    py = sys.executable
    cases: list[tuple[str, list[str], dict[str, str], str | None]] = [
        ("python -c pass (interpreter floor)", [py, "-c", "pass"], env, None),
        ("python -c 'import redis' (client library floor)", [py, "-c", "import redis"], env, None),
        ("python -m daemon.cli status ID", [py, "-m", "daemon.cli", "status", job.id], env, str(u.ROOT)),
        ("python -m daemon.cli status PREFIX", [py, "-m", "daemon.cli", "status", job.id[:12]], env, str(u.ROOT)),
        ("python -m daemon.cli list", [py, "-m", "daemon.cli", "list"], env, str(u.ROOT)),
        ("python -m daemon.cli logs ID", [py, "-m", "daemon.cli", "logs", job.id], env, str(u.ROOT)),
    ]
    if traind:
        cases.insert(2, ("traind status ID (console script on PATH)", [traind, "status", job.id], env, None))
    if run.args.before:
        old = str(Path(run.args.before).resolve())
        cases.insert(3, (f"python -m daemon.cli status ID, before ({run.args.before})",
                         [py, "-m", "daemon.cli", "status", job.id], {**env, "PYTHONPATH": old}, old))
    if rq:
        cases.append(("rq info (reference)", [rq, "info", "--url", srv.url], env, None))
    for _, argv, cenv, cwd in cases:
        _timed(argv, cenv, cwd)  # warm-up: page cache, .pyc files
    walls: dict[str, list[float]] = {c[0]: [] for c in cases}
    cpus: dict[str, list[float]] = {c[0]: [] for c in cases}
    for _ in range(reps):
        for label, argv, cenv, cwd in cases:
            w, c = _timed(argv, cenv, cwd)
            walls[label].append(w)
            cpus[label].append(c)
    rows = []
    for label, argv, _, _ in cases:
        s = u.summary(walls[label], 3)
        rows.append({"command": label, "runs": reps, "median_s": s["median"], "p95_s": s["p95"], "min_s": s["min"],
                     "cpu_median_s": round(u.median(cpus[label]) or 0.0, 3)})
        run.results[label] = {"wall_s": s, "cpu_s": u.summary(cpus[label], 3), "argv0": os.path.basename(argv[0])}
    run.table(f"CLI latency, {reps} runs each (fresh process per run)", rows)
    status = run.results["python -m daemon.cli status ID"]["wall_s"]["median"]
    run.results["goal"] = {"status_median_s": status, "goal_s": GOAL_S, "met": status <= GOAL_S,
                           "traind_on_path": traind, "rq_on_path": rq}
    run.note(f"goal: traind status ID median <= {GOAL_S} s: {status} s -> {'met' if status <= GOAL_S else 'NOT met'}")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reps", type=int, default=30, help="timed runs per command (default 30)")
    p.add_argument("--before", metavar="DIR", help="another checkout whose `status ID` to time alongside")


def main(argv: Sequence[str] | None = None) -> int:
    return u.main_wrapper("cli_latency", __doc__, argv, _body, _args)


if __name__ == "__main__":
    sys.exit(main())
