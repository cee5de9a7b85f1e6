"""A job ends when its last epoch ends: last epoch end -> ``succeeded``, over N jobs on a loaded machine.

One warm worker subprocess trains N small jobs (arrays through traind's multi-epoch prefetching tf.data pipeline,
``worker/data.py``) one after another while ``--burners`` busy-loop processes keep both cores busy on top of whatever
else the machine runs. For each job: the Redis time of its last epoch's event (written by the epoch-end hook) to its
``finished_at`` (the ``succeeded`` transition). ``--before DIR`` runs the same jobs first on a worker started from
another checkout (the code before the change), same burners, same run. Goal: p95 <= 0.5 s over 20 jobs.

    git worktree add /tmp/traind-before d03c1f3       # optional: the code before the change
    python -m bench.job_end [--jobs 20] [--before /tmp/traind-before]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import _util as u

NAME = "job_end"
GOAL_P95_S = 0.5
SPEC = {
    "model": {"builder": "bench.models:mlp", "builder_kwargs": {"dim": 8, "units": 32, "depth": 2}},
    "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": 4000, "dim": 8, "seed": 0}},
    "fit": {"epochs": 3, "batch_size": 64, "validation_split": 0.2, "shuffle": True, "seed": 1},
    "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True},
    "max_restarts": 0,
}
BURN = "import time\nwhile True:\n    sum(range(10000))\n"


def _jobs(client: Any, n: int, label: str, timeout: float = 600) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        h = client.submit({**SPEC, "name": f"{label}-{i}"})
        deadline = time.monotonic() + timeout
        while (st := client.store.get(h.id, with_history=False))["state"] not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {h.id} still {st['state']}")
            time.sleep(0.05)
        if st["state"] != "succeeded":
            raise RuntimeError(f"job {h.id} {st['state']}: {st.get('error')}")
        last = [e for e in client.store.events(h.id) if e.get("kind") == "epoch"][-1]
        lag = (st["finished_at"] - last["ts"]) / 1000
        out.append({"id": h.id, "last_epoch_ts": last["ts"], "finished_at": st["finished_at"], "end_lag_s": lag,
                    "load1": u.loadavg()[0]})
        print(f"  {label} job {i}: last epoch -> succeeded {lag:.3f} s (load {out[-1]['load1']})", flush=True)
    return out


def body(run: u.Run) -> None:
    url, storage, procs, client = u.start_stack(run)
    n = 2 if run.args.smoke else run.args.jobs
    for i in range(run.args.burners):
        procs.start([sys.executable, "-c", BURN], name=f"burner{i}")
    sides: list[tuple[str, Path | None]] = ([("before", Path(run.args.before))] if run.args.before else [])
    sides.append(("after", None))
    res: dict[str, list[dict[str, Any]]] = {}
    for label, root in sides:
        if root is None:
            wp = procs.worker(url, storage, name=f"worker-{label}")
        else:
            log = open(run.dir / "logs" / f"worker-{label}.log", "wb")  # noqa: SIM115 - owned by the child
            wp = subprocess.Popen([sys.executable, "-m", "daemon.cli", "worker", "--redis-url", url, "--storage",
                                   str(storage)], cwd=root, env=u.child_env({"PYTHONPATH": f"{root}:{u.ROOT}"}),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            procs.procs.append(wp)
        u.wait_warm(client.r, wp)
        _jobs(client, 1, f"{label}-warmup")  # untimed: the worker's first job pays one-time imports
        res[label] = _jobs(client, n, label)
        procs.kill(wp)
    rows = []
    for label, jobs in res.items():
        lags = [j["end_lag_s"] for j in jobs]
        s = u.summary(lags)
        rows.append({"worker": label, "jobs": len(lags), "p50_s": s["median"], "p95_s": s["p95"], "max_s": s["max"],
                     "load1_median": u.median(j["load1"] for j in jobs),
                     "goal_met": (s["p95"] or 0) <= GOAL_P95_S})
    run.table(f"last epoch end -> succeeded ({n} jobs of {SPEC['fit']['epochs']} epochs each, arrays through the "
              f"multi-epoch prefetching pipeline; {run.args.burners} busy-loop burners beside the worker; load1 = "
              "1-min load average when each job ended)", rows,
              ["worker", "jobs", "p50_s", "p95_s", "max_s", "load1_median", "goal_met"])
    run.results.update({"spec": SPEC, "burners": run.args.burners, "goal_p95_s": GOAL_P95_S, "jobs": res,
                        "rows": rows})


def add_args(p: Any) -> None:
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--burners", type=int, default=2, help="busy-loop processes keeping the cores busy")
    p.add_argument("--before", metavar="DIR", help="also run the jobs on a worker from this checkout, first")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
