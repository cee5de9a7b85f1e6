"""How fast the CLI answers: ``traind status ID`` (and ``list``, ``logs``) wall time over N runs, next to
``rq info`` (the reference a user compares with) and the floors below them (``python -c pass``, ``import redis``).

Each command runs as a fresh process, as a user types it, ``--reps`` times after one untimed warm-up (page cache);
the table gives median, p95 and min wall time plus the median CPU time (user+sys) of the child, which load on a
shared machine changes less than wall time. Goal: ``traind status ID`` median <= 0.3 s.

    python -m bench.cli_latency [--reps 30]
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

from bench import _util as u

GOAL_S = 0.3


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run; raises if the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
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
        client.store.add_event(job.id, f"event {i}")
    # What a user's shell has: the URL and storage dir exported, nothing else of traind's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    env.update({"TRAIND_REDIS_URL": srv.url, "TRAIND_STORAGE_DIR": str(storage), "PYTHONPATH": str(u.ROOT)})
    traind = shutil.which("traind")
    rq = shutil.which("rq")
    py = sys.executable
    cases: list[tuple[str, list[str]]] = [
        ("python -c pass (interpreter floor)", [py, "-c", "pass"]),
        ("python -c 'import redis' (client library floor)", [py, "-c", "import redis"]),
        ("python -m daemon.cli status ID", [py, "-m", "daemon.cli", "status", job.id]),
        ("python -m daemon.cli status PREFIX", [py, "-m", "daemon.cli", "status", job.id[:12]]),
        ("python -m daemon.cli list", [py, "-m", "daemon.cli", "list"]),
        ("python -m daemon.cli logs ID", [py, "-m", "daemon.cli", "logs", job.id]),
    ]
    if traind:
        cases.insert(2, ("traind status ID (console script on PATH)", [traind, "status", job.id]))
    if rq:
        cases.append(("rq info (reference)", [rq, "info", "--url", srv.url]))
    rows = []
    for label, argv in cases:
        _timed(argv, env)  # warm-up: page cache, .pyc files
        walls, cpus = [], []
        for _ in range(reps):
            w, c = _timed(argv, env)
            walls.append(w)
            cpus.append(c)
        s = u.summary(walls, 3)
        rows.append({"command": label, "runs": reps, "median_s": s["median"], "p95_s": s["p95"], "min_s": s["min"],
                     "cpu_median_s": round(u.median(cpus) or 0.0, 3)})
        run.results[label] = {"wall_s": s, "cpu_s": u.summary(cpus, 3), "argv0": os.path.basename(argv[0])}
    run.table(f"CLI latency, {reps} runs each (fresh process per run)", rows)
    status = run.results["python -m daemon.cli status ID"]["wall_s"]["median"]
    run.results["goal"] = {"status_median_s": status, "goal_s": GOAL_S, "met": status <= GOAL_S,
                           "traind_on_path": traind, "rq_on_path": rq}
    run.note(f"goal: traind status ID median <= {GOAL_S} s: {status} s -> {'met' if status <= GOAL_S else 'NOT met'}")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reps", type=int, default=30, help="timed runs per command (default 30)")


def main(argv: Sequence[str] | None = None) -> int:
    return u.main_wrapper("cli_latency", __doc__, argv, _body, _args)


if __name__ == "__main__":
    sys.exit(main())
