"""Queue and control-plane throughput (no TensorFlow): submits, listings and supervisor passes at scale.

* submit throughput from one client: ``Client.submit`` one by one vs ``Client.submit_many`` (pipelined) vs raw
  ``rq.Queue.enqueue`` (JSON serializer, the same message traind enqueues), alternating, Redis flushed before each;
* ``traind list --json`` (a subprocess: interpreter start included; ``--limit 1`` given as the start-up baseline)
  and ``Client.list()`` over 10,000 jobs;
* ``Supervisor.step`` with 10,000 running jobs (claimed through ``JobStore.transition``, leases not expired) and
  1,000 registered workers; then with 1,000 leases expired at once (requeue cost per job); and with 10,000 queued
  jobs whose delivery check is due (``redelivery_check_s`` old).

    python -m bench.queue [--smoke] [--json PATH]
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
import time
from typing import Any

from bench import _util as u

NAME = "queue"
CFG = {
    "full": {"submit_n": 2000, "reps": 3, "list_n": 10_000, "running": 10_000, "workers": 1_000, "expire": 1_000,
             "steps": 20},
    "smoke": {"submit_n": 50, "reps": 1, "list_n": 200, "running": 200, "workers": 20, "expire": 50, "steps": 3},
}
SPEC = {
    "name": "queue-bench",
    "model": {"builder": "examples.regression:build_model", "builder_kwargs": {"units": 16}},
    "data": {"loader": "examples.regression:load_data", "loader_kwargs": {"n": 2000}},
    "fit": {"epochs": 10, "batch_size": 100, "validation_split": 0.3},
    "early_stopping": {"monitor": "val_loss", "patience": 3, "restore_best_weights": True},
}


def submit_rates(run: u.Run, client: Any, c: dict[str, Any]) -> None:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from jobs.contract import keys
    from jobs.contract.ids import new_job_id

    r = client.r
    n = c["submit_n"]
    q = Queue(keys.rq_queue_name("default", "cpu", "default"), connection=r, serializer=JSONSerializer)
    res: dict[str, list[float]] = {"Client.submit (one by one)": [], "Client.submit_many (pipelined)": [],
                                   "rq Queue.enqueue (JSON, one by one)": []}
    names = list(res)
    for i in range(c["reps"]):
        for name in names if i % 2 == 0 else list(reversed(names)):
            r.flushdb()
            t0 = time.perf_counter()
            if name.startswith("Client.submit "):
                for _ in range(n):
                    client.submit(SPEC)
            elif name.startswith("Client.submit_many"):
                client.submit_many([SPEC] * n)
            else:
                for _ in range(n):
                    q.enqueue_call(func=keys.RQ_FUNC, args=[new_job_id(), 1], timeout=-1, result_ttl=0)
            res[name].append(n / (time.perf_counter() - t0))
    base = u.median(res[names[2]])
    rows = [{"method": k, "jobs_per_s": u.median(v), "vs_rq_enqueue": u.ratio(u.median(v), base),
             "runs": ", ".join(f"{x:.0f}" for x in v)} for k, v in res.items()]
    run.table(f"submit throughput, one client ({n} jobs per run, {c['reps']} runs each, median)", rows)
    run.results["submit"] = {"n": n, "rates": res, "rows": rows}


def make_jobs(client: Any, n: int) -> list[str]:
    ids: list[str] = []
    for i in range(0, n, 1000):
        ids += [h.id for h in client.submit_many([SPEC] * min(1000, n - i))]
    return ids


def listing(run: u.Run, client: Any, url: str, c: dict[str, Any]) -> None:
    r = client.r
    r.flushdb()
    n = c["list_n"]
    make_jobs(client, n)
    env = u.child_env()
    cmd = [sys.executable, "-m", "daemon.cli", "list", "--json", "--redis-url", url]

    def sub(extra: list[str]) -> tuple[float, int]:
        t0 = time.perf_counter()
        p = subprocess.run(cmd + extra, cwd=u.ROOT, env=env, capture_output=True, text=True, timeout=300)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"traind list failed ({p.returncode}): {p.stderr[-2000:]}")
        return dt, len(json.loads(p.stdout))

    times: dict[str, list[float]] = {"Client.list()": [], "traind list --json": [], "traind list --json --limit 1": []}
    counts: dict[str, int] = {}
    for _ in range(3):
        t0 = time.perf_counter()
        counts["Client.list()"] = len(client.list())
        times["Client.list()"].append(time.perf_counter() - t0)
        dt, k = sub([])
        times["traind list --json"].append(dt)
        counts["traind list --json"] = k
        dt, k = sub(["--limit", "1"])
        times["traind list --json --limit 1"].append(dt)
        counts["traind list --json --limit 1"] = k
    rows = [{"what": k, "jobs": counts[k], "seconds": u.median(v), "runs": ", ".join(f"{x:.3f}" for x in v)}
            for k, v in times.items()]
    start = u.median(times["traind list --json --limit 1"]) or 0.0
    rows.append({"what": "traind list --json minus start-up (--limit 1)", "jobs": n,
                 "seconds": (u.median(times["traind list --json"]) or 0.0) - start})
    run.table(f"listing {n} jobs (median of 3)", rows)
    run.results["list"] = {"n": n, "times": times, "rows": rows}


def wait_uptime(r: Any, s: float) -> None:
    up = float(r.info("server")["uptime_in_seconds"])
    if up < s:
        time.sleep(s - up + 0.5)


def supervisor_steps(run: u.Run, client: Any, url: str, c: dict[str, Any]) -> None:
    from daemon.supervisor import SCAN_LIMIT, Supervisor
    from jobs.contract import keys
    from jobs.contract.states import JobState
    from jobs.settings import SupervisorSettings

    r, store = client.r, client.store
    r.flushdb()
    logging.getLogger("traind").setLevel(logging.ERROR)  # one warning per requeued job would swamp the table
    settings = SupervisorSettings(redis_url=url)
    sup = Supervisor(settings, connection=r)
    wait_uptime(r, settings.lease_ttl_s + 1)
    # 10,000 running jobs with live leases (1 h) and 1,000 workers seen just now
    t0 = time.perf_counter()
    ids = make_jobs(client, c["running"])
    t_create = time.perf_counter() - t0
    workers = [f"bench-w{i:05d}" for i in range(c["workers"])]
    t0 = time.perf_counter()
    for k, jid in enumerate(ids):
        store.transition(jid, JobState.RUNNING, attempt=1,
                         fields={"token": secrets.token_hex(16), "worker": workers[k % len(workers)]},
                         lease_ttl_ms=3_600_000)
    t_claim = time.perf_counter() - t0
    now = store.now_ms()
    pipe = r.pipeline(transaction=False)
    for w in workers:
        pipe.hset(keys.worker(w), mapping={"id": w, "host": "bench", "pid": "0", "seen": str(now)})
        pipe.zadd(keys.WORKERS, {w: now})
    pipe.execute()

    def steps(k: int) -> list[float]:
        out = []
        for _ in range(k):
            rep = sup.step()
            if rep.skipped_reason:
                raise RuntimeError(rep.skipped_reason)
            out.append(rep.duration_s)
        return out

    idle = steps(c["steps"])
    rows = [{"scenario": f"{len(ids)} running (live leases), {len(workers)} workers", "step_ms": 1000 * u.median(idle),
             "p95_ms": 1000 * (u.percentile(idle, 95) or 0), "changed": 0, "per_job_ms": None}]
    # 1,000 leases expire at once (several rounds, different jobs each time)
    expired_runs = []
    for k in range(3):
        batch = ids[k * c["expire"]:(k + 1) * c["expire"]]
        past = store.now_ms() - 1000
        pipe = r.pipeline(transaction=False)
        for jid in batch:
            pipe.zadd(keys.LEASES, {jid: past}, xx=True)
        pipe.execute()
        rep = sup.step()
        if rep.skipped_reason:
            raise RuntimeError(rep.skipped_reason)
        expired_runs.append({"step_s": rep.duration_s, "requeued": len(rep.requeued)})
        assert len(rep.requeued) == min(len(batch), SCAN_LIMIT), rep
    med = u.median(x["step_s"] for x in expired_runs) or 0.0
    nreq = expired_runs[0]["requeued"]
    rows.append({"scenario": f"{c['expire']} leases expired at once (of {len(ids)} running)", "step_ms": 1000 * med,
                 "p95_ms": 1000 * max(x["step_s"] for x in expired_runs), "changed": nreq,
                 "per_job_ms": 1000 * med / max(nreq, 1)})
    after = steps(c["steps"])
    rows.append({"scenario": "next steps (requeued jobs waiting in the queue)", "step_ms": 1000 * u.median(after),
                 "p95_ms": 1000 * (u.percentile(after, 95) or 0), "changed": 0, "per_job_ms": None})
    # 10,000 queued jobs whose delivery check is due (no worker took them for redelivery_check_s)
    r.flushdb()
    make_jobs(client, c["running"])
    due_now = store.now_ms() + int(settings.redelivery_check_s * 1000) + 1000
    due = []
    for k in range(3):
        rep = sup.step(now_ms=due_now + k * (int(settings.redelivery_check_s * 1000) + 1000))
        due.append((rep.duration_s, len(rep.redelivered)))
    med_due = u.median(d for d, _ in due) or 0.0
    checked = min(c["running"], SCAN_LIMIT)
    rows.append({"scenario": f"{c['running']} queued, delivery check due (checks {checked}/step)",
                 "step_ms": 1000 * med_due, "p95_ms": 1000 * max(d for d, _ in due), "changed": due[0][1],
                 "per_job_ms": 1000 * med_due / checked})
    run.table(f"supervisor step (Supervisor.step; interval {settings.interval_s} s; SCAN_LIMIT {SCAN_LIMIT})", rows)
    run.results["supervisor"] = {"rows": rows, "idle_steps_s": idle, "expired": expired_runs, "after_s": after,
                                 "due": due, "create_s": t_create, "claim_s": t_claim, "running": len(ids),
                                 "workers": len(workers), "interval_s": settings.interval_s}


def body(run: u.Run) -> None:
    from jobs.client import Client

    c = CFG["smoke" if run.args.smoke else "full"]
    srv = u.start_redis(run)
    client = Client(settings=u.client_settings(srv.url, run.dir / "storage"))
    submit_rates(run, client, c)
    listing(run, client, srv.url, c)
    supervisor_steps(run, client, srv.url, c)


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
