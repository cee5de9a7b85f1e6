"""Failure detection: SIGKILL a worker's process tree mid-epoch and time kill -> job requeued.

traind: two warm worker subprocesses and a supervisor subprocess (defaults: lease TTL 5 s, heartbeat 1 s,
supervisor interval 0.5 s). A long job trains on one worker; the bench kills that worker's process group at a
random moment of an epoch, takes the kill time from Redis' clock (``JobStore.now_ms()``) and reads the job's
``requeued_at`` (also Redis' clock), N times (20 in the full run; a fresh spare worker replaces each killed one).
Goal: p95 <= lease_ttl_s + 1 s.

Plain RQ (the installed version, default settings), in parallel on its own redis-server: two ``rq worker``
processes, one job enqueued with ``Retry(max=3)`` that records each start and sleeps; the bench SIGKILLs the process
group of the worker running it (worker + work-horse) and waits until RQ requeues/fails it and runs it again, up
to a cap (15 minutes; 60 s with --smoke).

    python -m bench.detection [--smoke] [--json PATH] [--kills N] [--rq-cap-s S]
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
import threading
import time
from typing import Any

from bench import _util as u

NAME = "detection"
RQ_QUEUE = "bench-plain"


def slow_spec(batch_delay_s: float = 0.05, n: int = 800, epochs: int = 10_000) -> dict[str, Any]:
    """A job whose epochs last ~1-2 s at little CPU (each batch sleeps), long enough to be killed many times."""
    return {
        "name": "detection",
        "model": {"builder": "bench.models:slow_mlp", "builder_kwargs": {"batch_delay_s": batch_delay_s}},
        "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": n}},
        "fit": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2, "seed": 1},
        "max_restarts": 1000,
    }


def traind_side(run: u.Run, kills: int, out: dict[str, Any]) -> None:
    from jobs.contract import keys
    from jobs.settings import SupervisorSettings

    url, storage, procs, client = u.start_stack(run)
    r, store = client.r, client.store
    defaults = SupervisorSettings(redis_url=url)
    lease_s, interval_s = defaults.lease_ttl_s, defaults.interval_s
    procs.supervisor(url, storage)
    pool = u.Pool(procs, r, url, storage)
    for i in range(2):
        pool.spawn(f"worker{i}")
    for p in list(pool.alive):
        pool.wait_warm(p)
    job = client.submit(slow_spec())
    rng = random.Random(1)
    rows: list[dict[str, Any]] = []
    attempt = 1
    epoch_s = None
    for k in range(kills):
        u.wait_running(r, job.id, attempt)
        victim = u.wait_for(lambda: pool.runner(job.id), 60, "the worker running the job")
        spare = [p for p in pool.alive if p is not victim]
        for p in spare:
            pool.wait_warm(p)
        if epoch_s is None:
            hist = store.history(job.id)
            epoch_s = u.median(e["time_s"] for e in hist[1:]) if len(hist) > 2 else None
            if epoch_s is None:
                u.wait_for(lambda: len(store.history(job.id)) > 2, 120, "two epochs")
                epoch_s = u.median(e["time_s"] for e in store.history(job.id)[1:])
        time.sleep(rng.uniform(0, epoch_s))
        before = r.hmget(keys.job(job.id), ["batch", "epoch"])
        t_kill = store.now_ms()
        pool.kill(victim)
        if k + 1 < kills:
            pool.spawn(f"worker{k + 2}")  # the next spare warms up while this kill is detected

        def requeued() -> list[Any] | None:
            v = r.hmget(keys.job(job.id), ["attempt", "requeued_at", "lease_expired_at", "state"])
            return v if v[0] and int(v[0]) > attempt and v[1] else None  # noqa: B023

        v = u.wait_for(requeued, 120, f"requeue after kill {k + 1}", 0.01)
        attempt = int(v[0])
        req, exp = int(v[1]), int(v[2] or 0)
        row = {"kill": k + 1, "detect_s": (req - t_kill) / 1000, "lease_left_at_kill_s": (exp - t_kill) / 1000,
               "requeue_after_expiry_s": (req - exp) / 1000, "epoch": int(before[1] or 0) + 1,
               "batch": int(before[0] or 0)}
        rows.append(row)
        print(f"  kill {k + 1}: detected after {row['detect_s']:.3f} s (epoch {row['epoch']} batch {row['batch']})",
              flush=True)
    procs.close()  # the last requeued attempt would keep training (and loading the machine) while RQ is awaited
    d = [x["detect_s"] for x in rows]
    s = u.summary(d, 3)
    out.update({"lease_ttl_s": lease_s, "supervisor_interval_s": interval_s, "heartbeat_interval_s": 1.0,
                "epoch_s": epoch_s, "kills": rows, "detect_s": s, "goal_p95_s": lease_s + 1.0,
                "goal_met": s.get("p95") is not None and s["p95"] <= lease_s + 1.0})


def rq_side(run: u.Run, cap_s: float, out: dict[str, Any]) -> None:
    """Plain RQ with its defaults: kill the worker running a Retry(max=3) job, wait for RQ to notice."""
    import redis
    import rq
    from rq import Queue, Retry
    from rq.job import Job

    out.update({"rq_version": rq.__version__, "cap_s": cap_s})
    srv = u.RedisServer(run.dir / "redis-rq").start()
    run.on_exit(srv.stop)
    procs = u.Procs(run.dir / "logs-rq")
    run.on_exit(procs.close)
    r = redis.Redis.from_url(srv.url)
    workers = [procs.start([sys.executable, "-m", "rq.cli", "worker", RQ_QUEUE, "--url", srv.url], name=f"rq{i}")
               for i in range(2)]
    u.wait_for(lambda: r.scard("rq:workers") >= 2 or r.scard(f"rq:workers:{RQ_QUEUE}") >= 2, 60, "two rq workers",
               0.05)
    t_workers = time.time()
    key = "bench:rq:starts"
    q = Queue(RQ_QUEUE, connection=r)
    job = q.enqueue("bench._rq_task.long_task", key, 600, retry=Retry(max=3))
    first = json.loads(u.wait_for(lambda: r.lindex(key, 0), 60, "the rq job to start", 0.02))
    time.sleep(1.0)
    victim = next((p for p in workers if p.pid == first["ppid"]), None)
    if victim is None:
        raise RuntimeError(f"rq job ran in pid {first['pid']} (parent {first['ppid']}), not under a known worker")
    t_kill = time.time()
    u.Procs.kill(victim)  # the worker's session: worker + work-horse
    victim.wait(10)
    status_changed = None
    rerun = None
    statuses: list[tuple[float, str]] = []
    last = None
    while time.time() - t_kill < cap_s:
        st = Job.fetch(job.id, connection=r).get_status(refresh=True)
        st_s = getattr(st, "value", str(st))
        if st_s != last:
            statuses.append((round(time.time() - t_kill, 2), st_s))
            last = st_s
        if status_changed is None and st_s != "started":
            status_changed = time.time() - t_kill
        if r.llen(key) >= 2:
            rerun = json.loads(r.lindex(key, 1))["t"] - t_kill
            break
        if st_s == "failed":
            break
        time.sleep(min(1.0, cap_s / 10))
    final = Job.fetch(job.id, connection=r)
    enq = None
    if final.enqueued_at is not None:
        at = final.enqueued_at
        enq = (at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)).timestamp()
    if enq is not None and enq > t_kill:
        status_changed = enq - t_kill  # RQ's own record of the retry enqueue (a 1 s poll can miss the state)
    out.update({
        "kill_after_worker_start_s": round(t_kill - t_workers, 2),
        "retries_left": final.retries_left,
        "requeued_or_failed_after_s": None if status_changed is None else round(status_changed, 2),
        "ran_again_after_s": None if rerun is None else round(rerun, 2),
        "statuses": statuses,
        "still_waiting_at_cap": rerun is None and last != "failed",
        "defaults": _rq_defaults(),
    })


def _rq_defaults() -> dict[str, Any]:
    from rq import defaults as d

    return {"maintenance_interval_s": d.DEFAULT_MAINTENANCE_TASK_INTERVAL, "worker_ttl_s": d.DEFAULT_WORKER_TTL,
            "job_monitoring_interval_s": d.DEFAULT_JOB_MONITORING_INTERVAL, "job_timeout_s": 180}


def body(run: u.Run) -> None:
    kills = run.args.kills or (1 if run.args.smoke else 20)
    cap = run.args.rq_cap_s if run.args.rq_cap_s is not None else (60.0 if run.args.smoke else 900.0)
    rq_out: dict[str, Any] = {}
    rq_err: list[BaseException] = []

    def rq_thread() -> None:
        try:
            rq_side(run, cap, rq_out)
        except BaseException as e:  # reported below
            rq_err.append(e)

    t = None
    if cap > 0:
        t = threading.Thread(target=rq_thread, name="rq-side", daemon=True)
        t.start()
    tr: dict[str, Any] = {}
    traind_side(run, kills, tr)
    s = tr["detect_s"]
    run.table(f"traind: SIGKILL -> requeued ({kills} kills; lease TTL {tr['lease_ttl_s']} s, heartbeat 1 s, supervisor "
              f"every {tr['supervisor_interval_s']} s; epoch ~{tr['epoch_s']:.2f} s)",
              [{"p50_s": s["median"], "p95_s": s["p95"], "max_s": s["max"], "min_s": s["min"],
                "goal_p95_s": tr["goal_p95_s"], "met": "yes" if tr["goal_met"] else "NO"}])
    run.table("traind: kills", tr["kills"])
    run.results["traind"] = tr
    if t is not None:
        if t.is_alive():
            print(f"waiting for the plain-RQ side (cap {cap:.0f} s) ...", flush=True)
        t.join()
        if rq_err:
            rq_out["error"] = f"{type(rq_err[0]).__name__}: {rq_err[0]}"
        run.results["rq"] = rq_out
        again = rq_out.get("ran_again_after_s")
        run.table(f"plain RQ {rq_out.get('rq_version')} (defaults; 2 workers, Retry(max=3)): SIGKILL of the worker "
                  "running the job", [{
                      "requeued_or_failed_s": rq_out.get("requeued_or_failed_after_s"),
                      "ran_again_s": again if again is not None else (
                          f"still waiting at cap ({cap:.0f} s)" if rq_out.get("still_waiting_at_cap") else None),
                      "statuses": " ".join(f"{t_}s:{s_}" for t_, s_ in rq_out.get("statuses", [])),
                      "error": rq_out.get("error")}])
    else:
        run.results["rq"] = {"skipped": True}


def add_args(p: Any) -> None:
    p.add_argument("--kills", type=int, default=None, help="kills of the traind worker (default 20; smoke 1)")
    p.add_argument("--rq-cap-s", type=float, default=None,
                   help="plain-RQ wait cap in seconds (default 900; smoke 60; 0 skips the RQ side)")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
