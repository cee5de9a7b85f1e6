"""Work lost per kill: epochs trained twice after a worker is SIGKILLed, for ``resume_from: best`` and ``latest``.

Each repetition submits a fresh job (a small regression whose val_loss plateaus at the noise floor, so the best
epoch falls behind the latest one as training goes on), SIGKILLs the worker's process group at a random moment
(uniform in the first --window-s seconds of training), requeues the job at once as the supervisor would, and lets
a warm spare worker resume it. The epoch reached before the kill is the job's ``epoch`` field read after the kill
(the last epoch whose end was recorded) plus the fraction of the next epoch trained (``batch / steps``, progress
published after every batch); the resume point is the ``epoch`` E of the next attempt's ``resumed`` event (0 when
it starts from scratch). Epochs redone = epoch reached - E. The policies alternate.

    python -m bench.work_lost [--smoke] [--json PATH] [--reps N] [--window-s S]
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from bench import _util as u
from bench.resume import PROGRESS_EVERY_BATCH

NAME = "work_lost"
CFG = {"full": {"n": 4000, "reps": 10, "window_s": 12.0}, "smoke": {"n": 1000, "reps": 1, "window_s": 1.5}}


def spec(c: dict[str, Any], policy: str) -> dict[str, Any]:
    return {
        "name": f"work-lost-{policy}",
        "model": {"builder": "bench.models:mlp",
                  "builder_kwargs": {"dim": 4, "units": 16, "depth": 1, "learning_rate": 1e-2}},
        "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": c["n"], "dim": 4, "noise": 0.5}},
        "fit": {"epochs": 100_000, "batch_size": 32, "validation_split": 0.3, "seed": 1},
        "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True},
        "resume_from": policy,
        "max_restarts": 10,
    }


def resumed_epoch(r: Any, job_id: str, start: int, timeout: float = 300) -> tuple[int, str]:
    """Epoch E of the ``resumed`` event (0 when the attempt started from scratch), and the event's message."""
    from jobs.contract import keys
    from jobs.contract.events import EventKind

    def find() -> tuple[int, str] | None:
        for raw in r.lrange(keys.events(job_id), start, -1):
            ev = json.loads(raw)
            if ev.get("kind") == EventKind.RESUMED.value:
                return int(ev["epoch"]), ev["msg"]
            if ev.get("kind") == EventKind.NO_CHECKPOINT.value:
                return 0, ev["msg"]
            if ev.get("kind") == EventKind.TRAINING.value and ev.get("attempt") == 2:
                return 0, ev["msg"]  # no checkpoint at all yet: trained from scratch
        return None

    return u.wait_for(find, timeout, f"the resume of {job_id}", 0.02)


def body(run: u.Run) -> None:
    from jobs.contract import keys
    c = CFG["smoke" if run.args.smoke else "full"]
    reps = run.args.reps or c["reps"]
    window = run.args.window_s or c["window_s"]
    url, storage, procs, client = u.start_stack(run)
    r, store = client.r, client.store
    pool = u.Pool(procs, r, url, storage, env={"TRAIND_PROGRESS_INTERVAL_S": PROGRESS_EVERY_BATCH})
    for i in range(2):
        pool.spawn(f"worker{i}")
    rng = random.Random(4)
    rows: list[dict[str, Any]] = []
    for i in range(reps):
        for policy in ("best", "latest") if i % 2 == 0 else ("latest", "best"):
            for p in list(pool.alive):
                pool.wait_warm(p)
            job = client.submit(spec(c, policy))
            u.wait_running(r, job.id, 1)
            delay = rng.uniform(1.0, window)
            time.sleep(delay)
            victim = u.wait_for(lambda: pool.runner(job.id), 60, "the worker running the job")  # noqa: B023
            pool.kill(victim)
            last = i == reps - 1 and policy == ("latest" if i % 2 == 0 else "best")
            if not last:
                pool.spawn(f"worker-{i}-{policy}")  # the next spare warms up while this kill is handled
            f = ["epoch", "batch", "steps", "best_epoch"]
            ep, batch, steps, best = (int(v or 0) for v in r.hmget(keys.job(job.id), f))
            index = store.checkpoints(job.id)
            n_ev = r.llen(keys.events(job.id))
            u.requeue_now(store, job.id, 1)
            e, msg = resumed_epoch(r, job.id, n_ev)
            partial = batch / steps if steps else 0.0
            row = {"policy": policy, "kill_after_s": round(delay, 2), "epoch_done": ep,
                   "partial_epoch": round(partial, 3), "best_epoch": best,
                   "committed_ckpts": ",".join(str(k // 10**6) for k in sorted(index)), "resumed_at": e,
                   "epochs_redone": ep - e, "work_lost_epochs": round(ep - e + partial, 3)}
            rows.append(row)
            print(f"  {policy}: killed at epoch {ep} + {partial:.2f}, resumed at {e} -> {ep - e} epochs redone",
                  flush=True)
            job.cancel()
            u.wait_for(lambda: r.hget(keys.job(job.id), "state") == b"cancelled", 120, "cancel")  # noqa: B023
    summary = []
    for policy in ("best", "latest"):
        m = [x for x in rows if x["policy"] == policy]
        redone = [x["epochs_redone"] for x in m]
        summary.append({"policy": policy, "kills": len(m), "mean_epochs_redone": round(sum(redone) / len(m), 2),
                        "median_epochs_redone": u.median(redone), "max_epochs_redone": max(redone),
                        "mean_work_lost_epochs": round(sum(x["work_lost_epochs"] for x in m) / len(m), 2),
                        "kills_with_0_redone": sum(1 for x in redone if x == 0),
                        "kills_with_1_redone": sum(1 for x in redone if x == 1)})
    run.table("epochs trained twice per SIGKILL (medians and means over kills at random moments)", summary)
    run.table("every kill", rows)
    run.results.update({"config": c, "window_s": window, "kills": rows, "summary": summary})


def add_args(p: Any) -> None:
    p.add_argument("--reps", type=int, default=None, help="kills per policy (default 10; smoke 1)")
    p.add_argument("--window-s", type=float, default=None, help="kill uniformly within this many seconds of start")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
