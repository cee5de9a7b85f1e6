"""Time to resume: requeue -> the resumed attempt's first trained batch, on an idle warm worker vs a cold one.

A job (a ~2M-parameter MLP, so that loading its checkpoint is visible) trains on a worker subprocess whose
progress is published after every batch (``TRAIND_PROGRESS_INTERVAL_S=0.000001``). Each repetition SIGKILLs that worker
mid-epoch and requeues the job at once exactly as the supervisor would (the lease wait is ``bench.detection``'s
subject, not this one's), then reads the resumed attempt's timestamps from Redis (all on Redis' clock):
``requeued_at`` -> ``started_at`` (dequeue + claim) -> the "attempt N training" event (build, data, checkpoint
verify + load + restore) -> the first progress write with ``batch == 1`` (tf.function tracing + first step).

* warm: an idle worker (TensorFlow imported, registered) was waiting on the queue;
* cold: no idle worker; a fresh ``python -m daemon.cli worker`` is started at requeue time (pays the TF import).

Warm and cold alternate. Goal: warm resume <= 2 s plus the model load (build + checkpoint load + restore, timed
separately in this process at the end).

    python -m bench.resume [--smoke] [--json PATH] [--reps N]
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from bench import _util as u

NAME = "resume"
PROGRESS_EVERY_BATCH = "0"  # progress_interval_s=0: a progress write after every batch
CFG = {
    "full": {"n": 20_000, "dim": 32, "units": 1024, "depth": 3, "batch": 64, "reps": 6},
    "smoke": {"n": 2_000, "dim": 8, "units": 32, "depth": 1, "batch": 64, "reps": 1},
}


def spec(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "resume",
        "model": {"builder": "bench.models:mlp",
                  "builder_kwargs": {"dim": c["dim"], "units": c["units"], "depth": c["depth"], "learning_rate": 1e-4}},
        "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": c["n"], "dim": c["dim"]}},
        "fit": {"epochs": 100_000, "batch_size": c["batch"], "validation_split": 0.2, "seed": 1},
        "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True},
        "resume_from": "latest",
        "max_restarts": 1000,
    }


def measure_resume(r: Any, store: Any, job_id: str, new_attempt: int, t_req: int, n_events: int,
                   timeout: float = 300) -> dict[str, Any]:
    """Poll (~2 ms) until the resumed attempt's first progress write; returns its timeline (seconds from requeue)."""
    from jobs.contract import keys
    from jobs.contract.events import EventKind

    resume_ts = None
    resume_msg = None
    deadline = time.monotonic() + timeout
    f = ["attempt", "batch", "updated_at", "started_at", "state"]
    while True:
        pipe = r.pipeline(transaction=False)
        pipe.lrange(keys.events(job_id), n_events, -1)
        pipe.hmget(keys.job(job_id), f)
        evs, vals = pipe.execute()
        v = dict(zip(f, (x.decode() if x else "" for x in vals)))
        if resume_ts is None:
            for raw in evs:
                e = json.loads(raw)
                if e.get("kind") == EventKind.RESUMED.value:
                    resume_msg = e["msg"]
                if e.get("kind") == EventKind.TRAINING.value and e.get("attempt") == new_attempt:
                    resume_ts = int(e["ts"])
        if (resume_ts is not None and v["attempt"] == str(new_attempt) and v["state"] == "running"
                and int(v["batch"] or 0) >= 1 and int(v["updated_at"] or 0) >= resume_ts):
            first = int(v["updated_at"])
            started = int(v["started_at"])
            return {"claim_s": (started - t_req) / 1000, "setup_and_load_s": (resume_ts - started) / 1000,
                    "first_batch_s": (first - resume_ts) / 1000, "total_s": (first - t_req) / 1000,
                    "batch_seen": int(v["batch"]), "exact": int(v["batch"]) == 1, "resumed": resume_msg}
        if v["state"] in ("failed", "cancelled", "succeeded"):
            raise RuntimeError(f"job {job_id} ended while resuming: {v}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no first batch of attempt {new_attempt} after {timeout} s: {v}")
        time.sleep(0.002)


def model_load_cost(storage: Any, store: Any, job_id: str, c: dict[str, Any], reps: int = 3) -> dict[str, Any]:
    """Build the model and load + restore the job's newest checkpoint here (what a resuming worker does)."""
    import keras

    from bench.models import mlp
    from worker.checkpoint import Checkpoints
    from worker.ledger import RedisLedger

    index = store.checkpoints(job_id)
    manifest = index[max(index)]
    ck = Checkpoints(storage, RedisLedger(store, job_id, 0, ""))
    builds, loads, restores = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        model = mlp(dim=c["dim"], units=c["units"], depth=c["depth"], learning_rate=1e-4)
        model(keras.ops.zeros((1, c["dim"])))
        t1 = time.perf_counter()
        restored = ck.load(manifest)
        t2 = time.perf_counter()
        model.set_weights(restored.weights)
        model.optimizer.build(model.trainable_variables)
        for var, a in zip(model.optimizer.variables, restored.optimizer):
            var.assign(a)
        t3 = time.perf_counter()
        builds.append(t1 - t0)
        loads.append(t2 - t1)
        restores.append(t3 - t2)
        keras.backend.clear_session()
    ck.close()
    return {"checkpoint_bytes": manifest["size"], "build_s": u.median(builds), "load_s": u.median(loads),
            "restore_s": u.median(restores),
            "model_load_s": (u.median(builds) or 0) + (u.median(loads) or 0) + (u.median(restores) or 0)}


def body(run: u.Run) -> None:
    from jobs.contract import keys
    c = CFG["smoke" if run.args.smoke else "full"]
    reps = run.args.reps or c["reps"]
    url, storage, procs, client = u.start_stack(run)
    if run.args.storage:  # e.g. s3://bucket/prefix: endpoint and keys from the AWS_* variables (bench/s3.py)
        from jobs.client import Client

        storage = run.args.storage
        client = Client(settings=u.client_settings(url, storage))
    r, store = client.r, client.store
    pool = u.Pool(procs, r, url, storage, env={"TRAIND_PROGRESS_INTERVAL_S": PROGRESS_EVERY_BATCH})
    first = pool.spawn("worker0")
    pool.spawn("spare0")  # the first repetition is warm: its idle worker imports TensorFlow alongside
    pool.wait_warm(first)
    job = client.submit(spec(c))
    rng = random.Random(2)
    rows: list[dict[str, Any]] = []
    attempt = 1
    modes = [m for _ in range(reps) for m in ("warm", "cold")]
    for i, mode in enumerate(modes):
        # the current attempt has finished an epoch of its own (so its checkpoint exists) and is mid-epoch
        u.wait_running(r, job.id, attempt)
        u.wait_for(lambda: int(r.hget(keys.job(job.id), "epoch") or 0)
                   > int(r.hget(keys.job(job.id), "resume_epoch") or 0) and r.hlen(keys.checkpoints(job.id)) > 0,
                   600, "an epoch of the current attempt", 0.05)
        victim = u.wait_for(lambda: pool.runner(job.id), 60, "the worker running the job")
        idle = [p for p in pool.alive if p is not victim]
        if mode == "warm" and not idle:
            idle.append(pool.spawn(f"worker{i + 1}"))
        if mode == "cold":
            for p in idle:
                pool.kill(p)
        for p in [p for p in pool.alive if p is not victim]:
            pool.wait_warm(p)
        time.sleep(rng.uniform(0.2, 1.0))  # somewhere in the next epoch
        pool.kill(victim)
        n_events = r.llen(keys.events(job.id))
        t_req = u.requeue_now(store, job.id, attempt)
        if mode == "cold":
            pool.spawn(f"cold{i}")
        attempt += 1
        row = {"rep": i // 2 + 1, "mode": mode, **measure_resume(r, store, job.id, attempt, t_req, n_events)}
        rows.append(row)
        print(f"  {mode}: {row['total_s']:.3f} s (claim {row['claim_s']:.3f}, setup+load {row['setup_and_load_s']:.3f}"
              f", first batch {row['first_batch_s']:.3f})", flush=True)
    for p in list(pool.alive):
        pool.kill(p)
    load = model_load_cost(client.storage, store, job.id, c)
    summary_rows = []
    for mode in ("warm", "cold"):
        m = [x for x in rows if x["mode"] == mode]
        summary_rows.append({
            "mode": mode, "n": len(m), "total_s": u.median(x["total_s"] for x in m),
            "claim_s": u.median(x["claim_s"] for x in m),
            "setup_and_load_s": u.median(x["setup_and_load_s"] for x in m),
            "first_batch_s": u.median(x["first_batch_s"] for x in m), "max_total_s": max(x["total_s"] for x in m)})
    warm = summary_rows[0]["total_s"] or 0.0
    goal = 2.0 + load["model_load_s"]
    run.table(f"resume: requeue -> first batch of the resumed attempt (medians; model {c['units']}x{c['depth']} MLP, "
              f"checkpoint {load['checkpoint_bytes'] / 1e6:.1f} MB)", summary_rows)
    run.table("model load measured in this process (build + checkpoint sha256/np.load + set_weights/optimizer)",
              [{**load, "goal_warm_total_s": round(goal, 3), "warm_total_s": warm,
                "met": "yes" if warm <= goal else "NO"}])
    run.table("resume: every repetition", rows)
    run.results.update({"config": c, "reps": rows, "summary": summary_rows, "model_load": load,
                        "goal_warm_s": goal, "goal_met": warm <= goal})


def add_args(p: Any) -> None:
    p.add_argument("--reps", type=int, default=None, help="warm/cold pairs (default 6; smoke 1)")
    p.add_argument("--storage", default=None, help="checkpoint storage URL (default: a local dir in the scratch dir)")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
