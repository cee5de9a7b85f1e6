"""Goodput: what failures and checkpoints cost a paced job with the defaults, for arrays and a tf.data loader.

A job of ``epochs`` paced epochs (every batch sleeps ``batch_delay_s``: light on CPU, as device compute is) runs on a
real stack (redis-server, a supervisor, two warm workers) in these scenarios:

- ``none``: no failure (the reference wall time);
- ``kills``: the worker running the job is SIGKILLed at fixed wall times after training started (``kill_at_s``);
  the supervisor notices the lost lease and a warm spare resumes it;
- ``hang``: the training step blocks for good at batch 41 (optimizer step 40) on the first worker; its progress
  watchdog notices, hands the job back and replaces its process; another worker finishes the job;
- ``epoch-only``: no failure, step checkpoints off (``checkpoint.every_s: null``): the steady-state reference.

Per failure: seconds lost against ``none`` (wall time from the first ``training`` event to the final state), split
by :func:`jobs.goodput.account` over the job's own events into detection, restart and redone work. The steady-state
cost of the default step checkpoints is the training time (the sum of the epochs' ``time_s``) of ``none`` over
``epoch-only``. The implied goodput for 1-hour epochs and one failure an hour is ``1 - (cost - 1) - lost / 3600``.

    python -m bench.goodput [--smoke] [--json PATH]
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import _util as u

NAME = "goodput"
CFG = {
    "full": {"batches": 400, "batch_size": 32, "epochs": 3, "delay_s": 0.05, "kill_at_s": [15.0, 40.0]},
    "smoke": {"batches": 40, "batch_size": 32, "epochs": 2, "delay_s": 0.01, "kill_at_s": [1.0]},
}
HANG_STEP = 40


def spec(c: dict[str, Any], form: str, *, hang_marker: str = "", epoch_only: bool = False) -> dict[str, Any]:
    n_train = c["batches"] * c["batch_size"]
    model = {"builder": "bench.models:paced_mlp",
             "builder_kwargs": {"batch_delay_s": c["delay_s"], "hang_at_step": HANG_STEP if hang_marker else -1,
                                "hang_marker": hang_marker}}
    s: dict[str, Any] = {"name": f"goodput-{form}", "model": model, "max_restarts": 10,
                         "fit": {"epochs": c["epochs"], "seed": 1},
                         "checkpoint": {"monitor": "val_loss", "save_weights_only": True}}
    if form == "arrays":
        s["data"] = {"loader": "bench.models:regression_data", "loader_kwargs": {"n": int(n_train / 0.8), "dim": 4}}
        s["fit"].update({"batch_size": c["batch_size"], "validation_split": 0.2})
    else:
        s["data"] = {"loader": "bench.models:regression_dataset",
                     "loader_kwargs": {"n": int(n_train / 0.8), "dim": 4, "batch_size": c["batch_size"]}}
    if epoch_only:
        s["checkpoint"]["every_s"] = None
    return s


def events(r: Any, job_id: str) -> list[dict[str, Any]]:
    from jobs.contract import keys

    return [json.loads(x) for x in r.lrange(keys.events(job_id), 0, -1)]


def first(evs: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any] | None:
    return next((e for e in evs if e.get("kind") == kind and all(e.get(k) == v for k, v in match.items())), None)


def run_job(run: u.Run, stack: u.Stack, pool: u.Pool, c: dict[str, Any], form: str, scenario: str) -> dict[str, Any]:
    from jobs.contract import keys
    from jobs.goodput import account

    r = stack.client.r
    for p in list(pool.alive):
        pool.wait_warm(p)
    marker = str(run.dir / f"hang-{form}-{time.time_ns()}") if scenario == "hang" else ""
    job = stack.client.submit(spec(c, form, hang_marker=marker, epoch_only=scenario == "epoch-only"))
    u.wait_running(r, job.id, 1)
    t0 = time.monotonic()
    kills = 0
    if scenario == "kills":
        for at in c["kill_at_s"]:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            victim = pool.runner(job.id)
            if victim is None or r.hget(keys.job(job.id), "state") != b"running":
                continue
            pool.kill(victim)
            kills += 1
            pool.spawn(f"worker-{form}-{kills}")  # keep one spare warm for the next failure
    state = u.wait_for(lambda: (s := r.hget(keys.job(job.id), "state")) in (b"succeeded", b"failed", b"cancelled")
                       and s, 900, f"the end of {job.id}", 0.2)
    if state != b"succeeded":
        raise RuntimeError(f"{form}/{scenario}: job {job.id} ended {state!r}: {u.log_tail(pool.alive[0])}")
    evs = events(r, job.id)
    rec = {k.decode(): v.decode() for k, v in r.hgetall(keys.job(job.id)).items()}
    g = account(evs, stall_s=float(rec.get("ckpt_stall_s") or 0.0), lease_ttl_s=5.0)
    train0 = first(evs, "training", attempt=1)
    end = first(evs, "succeeded")
    assert train0 is not None and end is not None
    history = stack.client.store.history(job.id)
    row: dict[str, Any] = {
        "form": form, "scenario": scenario, "failures": kills or (1 if scenario == "hang" else 0),
        "wall_s": round((end["ts"] - train0["ts"]) / 1000, 2),
        "training_s": round(sum(float(h.get("time_s") or 0) for h in history), 2),
        "detection_s": round(g.detection_s, 2), "restart_s": round(g.restart_s, 2), "redone_s": round(g.redone_s, 2),
        "checkpoint_s": round(g.checkpoint_s, 2), "goodput": round(g.ratio, 4),
        "step_ckpt_interval_s": rec.get("ckpt_interval_s"), "data_resume": _data_resume(evs),
    }
    if scenario == "hang":
        hung = first(evs, "hung")
        assert hung is not None
        started = hung["ts"] - 1000 * float(hung.get("silent_s") or 0)
        row.update({"hang_noticed_after_s": round(float(hung.get("silent_s") or 0), 1),
                    "hang_to_success_s": round((end["ts"] - started) / 1000, 1),
                    "hung_at": f"epoch {hung.get('epoch')} batch {hung.get('batch')}"})
    print(f"  {form}/{scenario}: {row}", flush=True)
    return row


def _data_resume(evs: list[dict[str, Any]]) -> str:
    how = [e.get("how") for e in evs if e.get("kind") == "data_resumed" and e.get("how")]
    return ",".join(str(h) for h in how)


def body(run: u.Run) -> None:
    c = CFG["smoke" if run.args.smoke else "full"]
    stack = u.start_stack(run)
    env = {"TRAIND_LEMON_FAILURES": "0"}  # every worker here is one machine: the kills must not drain it
    stack.procs.supervisor(stack.url, stack.storage, env=env)
    pool = u.Pool(stack.procs, stack.client.r, stack.url, stack.storage, env=env)
    for i in range(2):
        pool.spawn(f"worker{i}")
    rows = []
    for form in ("arrays", "dataset"):
        for scenario in ("none", "epoch-only", "kills"):
            rows.append(run_job(run, stack, pool, c, form, scenario))
    rows.append(run_job(run, stack, pool, c, "arrays", "hang"))
    summary = []
    for form in ("arrays", "dataset"):
        by = {x["scenario"]: x for x in rows if x["form"] == form}
        none, kills, epoch_only = by["none"], by["kills"], by["epoch-only"]
        n = max(kills["failures"], 1)
        lost = (kills["wall_s"] - none["wall_s"]) / n
        cost = none["training_s"] / epoch_only["training_s"] if epoch_only["training_s"] else None
        summary.append({
            "form": form, "kills": kills["failures"], "lost_per_kill_s": round(lost, 1),
            "detection_s": round(kills["detection_s"] / n, 1), "restart_s": round(kills["restart_s"] / n, 1),
            "redone_s": round(kills["redone_s"] / n, 1), "goal_lost_s": 15,
            "step_ckpt_cost": None if cost is None else round(cost, 4), "goal_cost": 1.01,
            "goodput_1h_epochs_1_failure_per_h": None if cost is None else round(1 - max(cost - 1, 0) - lost / 3600, 4),
            "goal_goodput": 0.99, "data_resume": kills["data_resume"],
        })
    hang = next(x for x in rows if x["scenario"] == "hang")
    run.table("per failure with the defaults (paced job; lost = wall time against the run without failure)", summary)
    run.table("hang at batch 41 (watchdog defaults): noticed after, and the job's success after the hang",
              [{k: hang[k] for k in ("hung_at", "hang_noticed_after_s", "hang_to_success_s", "detection_s",
                                     "restart_s", "redone_s")} | {"goal_s": 300}])
    run.table("every job", rows)
    run.results.update({"config": c, "rows": rows, "summary": summary})


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
