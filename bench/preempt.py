"""Preemption by priority (issue 24): how soon a high-priority job trains when every worker is busy with low-priority
jobs, and what the preempted job loses.

A real stack (redis-server, a supervisor with the default pass interval, lease TTL and heartbeat, warm workers) runs
one paced low-priority job per worker (``bench.models:paced_mlp``: every batch sleeps, light on CPU as device compute
is; long epochs, so preemptions land mid-epoch). Each repetition waits until every low job has run its current
attempt past ``TRAIND_PREEMPT_MIN_RUN_S`` and is mid-epoch, submits a short high-priority job and measures, on the
Redis clock: submit -> the supervisor's preemption request (``preempt_requested`` event) -> the victim's requeue
(``preempted`` event: its worker saw the flag at a heartbeat, finished the batch, saved a checkpoint) -> the high job
claimed (``started_at``) -> its first trained batch (progress polled every 10 ms, published after every batch). The
reference "model load" is the same high job's claim -> first batch on an idle warm worker (measured first, after each
worker ran one job).

Work lost by the victim: the position it reached (its last published progress, and its mid-epoch checkpoint) minus
the position its next attempt resumed at (``resumed`` event), in batches; and the epochs its event log records twice.

``--before DIR`` first measures the same with workers started from another checkout (the code before a change:
``git archive COMMIT | tar -x -C DIR``), in the same run, so that both see the same machine.

    python -m bench.preempt [--smoke] [--json PATH] [--reps N] [--before DIR]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import _util as u
from bench.resume import PROGRESS_EVERY_BATCH

NAME = "preempt"
CFG = {
    "full": {"workers": 2, "reps": 6, "batches": 400, "delay_s": 0.05, "high_batches": 40, "min_run_s": 3.0},
    "smoke": {"workers": 1, "reps": 1, "batches": 60, "delay_s": 0.02, "high_batches": 10, "min_run_s": 1.0},
}
LEASE_TTL_S = 5.0  # the default (jobs.settings): the goal is "within the lease time plus the model load"


def spec(c: dict[str, Any], name: str, priority: str, batches: int, epochs: int) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"builder": "bench.models:paced_mlp", "builder_kwargs": {"batch_delay_s": c["delay_s"]}},
        "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": int(batches * 32 / 0.8), "dim": 4}},
        "fit": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2, "seed": 1},
        "checkpoint": {"monitor": "val_loss", "save_weights_only": True},
        "resources": {"priority": priority},
    }


def events(r: Any, job_id: str) -> list[dict[str, Any]]:
    from jobs.contract import keys

    return [json.loads(x) for x in r.lrange(keys.events(job_id), 0, -1)]


def fields(r: Any, job_id: str) -> dict[str, str]:
    from jobs.contract import keys

    return {k.decode(): v.decode() for k, v in r.hgetall(keys.job(job_id)).items()}


def first_batch(r: Any, store: Any, job_id: str, timeout: float = 300) -> tuple[int, dict[str, str]]:
    """(Redis ms when the job was first seen running with a trained batch, its fields then)."""
    def seen() -> tuple[int, dict[str, str]] | None:
        f = fields(r, job_id)
        if f.get("state") in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} ended: {f.get('state')} {f.get('error')}")
        if f.get("state") in ("running", "succeeded") and (int(f.get("batch") or 0) > 0 or int(f.get("epoch") or 0)):
            return store.now_ms(), f
        return None

    return u.wait_for(seen, timeout, f"the first batch of {job_id}", 0.01)


def ended(r: Any, job_id: str, timeout: float = 600) -> str:
    from jobs.contract import keys

    st = u.wait_for(lambda: (s := r.hget(keys.job(job_id), "state")) in (b"succeeded", b"failed", b"cancelled") and s,
                    timeout, f"the end of {job_id}", 0.05)
    return st.decode()


def position(epoch: int, batch: int, steps: int) -> int:
    """Batches trained from the start: ``epoch`` finished epochs and ``batch`` batches into the next one."""
    return epoch * steps + batch


def spawn(run: u.Run, stack: Any, env: dict[str, str], name: str, root: Path | None) -> Any:
    """A worker subprocess from this checkout, or (``--before``) from the checkout ``root``."""
    if root is None:
        return stack.procs.worker(stack.url, stack.storage, env=env, name=name)
    log = open(run.dir / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
    wp = subprocess.Popen([sys.executable, "-m", "daemon.cli", "worker", "--redis-url", stack.url, "--storage",
                           str(stack.storage)], cwd=root, env=u.child_env({**env, "PYTHONPATH": f"{root}:{u.ROOT}"}),
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    stack.procs.procs.append(wp)
    return wp


def side(run: u.Run, c: dict[str, Any], stack: Any, env: dict[str, str], label: str, root: Path | None,
         reps: int) -> dict[str, Any]:
    """One set of warm workers (this code, or ``--before``'s): the reference load, then ``reps`` preemptions."""
    from jobs.contract.events import EventKind

    r, store, client = stack.client.r, stack.client.store, stack.client
    workers = [spawn(run, stack, env, f"worker-{label}-{i}", root) for i in range(c["workers"])]
    for wp in workers:
        u.wait_warm(r, wp)

    # The reference: the high job on an idle warm worker (claim -> first batch is the model and data load). A
    # worker's first job also pays one-time tracing: 2 x workers runs, the median of the later half counts.
    loads, idle = [], []
    for k in range(2 * c["workers"]):
        ref = client.submit(spec(c, f"preempt-reference-{label}-{k}", "high", c["high_batches"], 1))
        t_ref, _ = first_batch(r, store, ref.id)
        ended(r, ref.id)
        ref_f = fields(r, ref.id)
        loads.append((t_ref - int(ref_f["started_at"])) / 1000)
        idle.append((t_ref - int(ref_f["created_at"])) / 1000)
    model_load_s = float(u.median(loads[c["workers"]:]) or 0.0)
    idle_submit_s = float(u.median(idle[c["workers"]:]) or 0.0)
    print(f"  {label}: idle worker: submit -> first batch {idle_submit_s:.2f} s (claim -> first batch "
          f"{model_load_s:.2f} s)", flush=True)

    lows = [client.submit(spec(c, f"preempt-low-{label}-{i}", "low", c["batches"], 100_000))
            for i in range(c["workers"])]
    rows: list[dict[str, Any]] = []
    for i in range(reps):
        def ready() -> bool:
            now = store.now_ms()
            for j in lows:
                f = fields(r, j.id)
                steps = int(f.get("steps") or 0)
                if f.get("state") != "running" or now - int(f.get("started_at") or now) < c["min_run_s"] * 1000 + 500:
                    return False
                if not steps or not 2 <= int(f.get("batch") or 0) <= steps - 10:
                    return False  # mid-epoch, not right at an epoch end (a stop there is a plain epoch-end stop)
            return True

        u.wait_for(ready, 300, "every low job running past the minimum run time, mid-epoch", 0.02)
        high = client.submit(spec(c, f"preempt-high-{label}-{i}", "high", c["high_batches"], 1))
        t_first, _ = first_batch(r, store, high.id)
        hf = fields(r, high.id)
        created, claimed = int(hf["created_at"]), int(hf["started_at"])
        req = next((e for e in events(r, high.id) if e.get("kind") == EventKind.PREEMPT_REQUESTED.value), None)
        if req is None:
            raise RuntimeError(f"high job {high.id} ran without a preemption: {events(r, high.id)}")
        victim = req["victim"]
        vevs = events(r, victim)
        flag = next(e for e in vevs if e.get("kind") == EventKind.PREEMPT_REQUESTED.value and e.get("by") == high.id)
        pre = next(e for e in vevs if e.get("kind") == EventKind.PREEMPTED.value and e.get("by") == high.id)
        vf = fields(r, victim)  # its last published progress (every batch) before the requeue
        steps = int(vf.get("steps") or 0)
        running_epoch, batch = int(vf.get("running_epoch") or 0), int(vf.get("batch") or 0)
        ckpt = next((e for e in vevs if e.get("kind") == EventKind.CHECKPOINT.value and e["ts"] >= flag["ts"]), None)
        reached = max(position(int(vf.get("epoch") or 0), 0, steps),
                      position(running_epoch - 1, batch, steps) if running_epoch else 0,
                      position(int(ckpt["epoch"]) - 1, int(ckpt["batch"]), steps) if ckpt else 0)
        ended(r, high.id)
        # The victim resumes on the freed worker: where?
        n_before = len(vevs)
        res = u.wait_for(lambda: next((e for e in events(r, victim)[n_before:]  # noqa: B023
                                       if e.get("kind") == EventKind.RESUMED.value), None), 300,
                         f"the resume of {victim}", 0.05)
        e_res, b_res = int(res["epoch"]), int(res["batch"])
        resumed = position(e_res - 1, b_res, steps) if b_res else position(e_res, 0, steps)
        row = {
            "worker": label, "rep": i + 1, "submit_to_first_batch_s": round((t_first - created) / 1000, 2),
            "submit_to_request_s": round((flag["ts"] - created) / 1000, 2),
            "request_to_requeue_s": round((pre["ts"] - flag["ts"]) / 1000, 2),
            "requeue_to_claim_s": round((claimed - pre["ts"]) / 1000, 2),
            "claim_to_first_batch_s": round((t_first - claimed) / 1000, 2),
            "stopped_at": f"e{ckpt['epoch']} b{ckpt['batch']}/{steps}" if ckpt else f"end of e{vf.get('epoch')}",
            "resumed_at": f"e{e_res} b{b_res}", "batches_lost": reached - resumed,
            "load1": round(os.getloadavg()[0], 2),
        }
        rows.append(row)
        print(f"  rep {i + 1}: {row}", flush=True)

    for j in lows:
        j.cancel()
    for j in lows:
        ended(r, j.id)
    for wp in workers:
        stack.procs.kill(wp)
    redone = 0
    for j in lows:
        epochs = [e["epoch"] for e in events(r, j.id) if e.get("kind") == EventKind.EPOCH.value]
        redone += len(epochs) - len(set(epochs))
    preemptions = sum(int(fields(r, j.id).get("preemptions") or 0) for j in lows)
    restarts = sum(int(fields(r, j.id).get("restarts") or 0) for j in lows)
    lat = [x["submit_to_first_batch_s"] for x in rows]
    goal_s = LEASE_TTL_S + model_load_s
    lost = [x["batches_lost"] for x in rows]
    summary = {
        "worker": label, "preemptions": len(rows), "submit_to_first_batch_median_s": u.median(lat),
        "max_s": max(lat), "goal_s": round(goal_s, 2), "goal_met": max(lat) <= goal_s,
        "requeue_to_claim_median_s": u.median(x["requeue_to_claim_s"] for x in rows),
        "claim_to_first_batch_median_s": u.median(x["claim_to_first_batch_s"] for x in rows),
        "idle_submit_to_first_batch_s": round(idle_submit_s, 2), "model_load_s": round(model_load_s, 2),
        "batches_lost_max": max(lost), "epochs_redone": redone, "victim_preemptions": preemptions,
        "victim_restarts": restarts, "load1_median": u.median(x["load1"] for x in rows),
    }
    return {"rows": rows, "summary": summary, "reference_model_load_s": loads,
            "reference_submit_to_first_batch_s": idle}


def body(run: u.Run) -> None:
    c = CFG["smoke" if run.args.smoke else "full"]
    reps = run.args.reps or c["reps"]
    stack = u.start_stack(run)
    env = {"TRAIND_PROGRESS_INTERVAL_S": PROGRESS_EVERY_BATCH, "TRAIND_PREEMPT_MIN_RUN_S": str(c["min_run_s"])}
    stack.procs.supervisor(stack.url, stack.storage, env=env)
    sides = ([("before", Path(run.args.before))] if run.args.before else []) + [("after", None)]
    out = {label: side(run, c, stack, env, label, root, reps) for label, root in sides}
    after = out["after"]
    run.table("high-priority submit -> first batch, every worker busy with low-priority jobs (goal: lease TTL 5 s + "
              "model load); work lost by the preempted jobs" + ("; `before`: the workers of --before's checkout, "
                                                                "first, same run" if run.args.before else ""),
              [x["summary"] for x in out.values()])
    run.table("every preemption (Redis clock; load1: 1-min load average when it was measured)",
              [row for x in out.values() for row in x["rows"]])
    run.results.update({"config": c, "rows": after["rows"], "summary": after["summary"], "lease_ttl_s": LEASE_TTL_S,
                        "reference_model_load_s": after["reference_model_load_s"],
                        "reference_submit_to_first_batch_s": after["reference_submit_to_first_batch_s"],
                        "sides": out, "before_dir": run.args.before})


def add_args(p: Any) -> None:
    p.add_argument("--reps", type=int, default=None, help="preemptions (default 6; smoke 1)")
    p.add_argument("--before", metavar="DIR", help="also measure workers started from this checkout, first")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
