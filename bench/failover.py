"""Redis failover as traind sees it (a primary, a replica, three sentinels; a supervisor and a worker training).

* ``failovers`` rounds: the primary is SIGKILLed while a job trains; measured per round: kill -> the sentinels agree
  on the promoted replica, and kill -> the job's next progress write lands on the new primary (training progressing
  again). Between rounds the killed node is started again as a replica of the new primary (what an operator does),
  so every round fails over the same way. Job restarts across all rounds are counted.
* submit throughput on the same cluster (replica in sync): ``Client.submit`` one by one and ``Client.submit_many``,
  with ``WAIT`` (``TRAIND_REDIS_MIN_REPLICAS=auto``: every job creation confirmed by the replica) vs without (``0``),
  alternating, database flushed before each run.

The sentinel settings used (``down-after-milliseconds`` and ``failover-timeout``) and the traind settings are in
the results; they are the test suite's (tests/ha/cluster.py).

    python -m bench.failover [--smoke] [--json PATH]
"""

from __future__ import annotations

import signal
import time
from typing import Any

import redis

from bench import _util as u

NAME = "failover"
CFG = {
    "full": {"failovers": 12, "submit_n": 300, "reps": 8},
    "smoke": {"failovers": 1, "submit_n": 20, "reps": 1},
}
ENV = {"TRAIND_LEASE_TTL_S": "5", "TRAIND_HEARTBEAT_INTERVAL_S": "0.5", "TRAIND_PROGRESS_INTERVAL_S": "0.05",
       "TRAIND_REDIS_SOCKET_TIMEOUT_S": "3", "TRAIND_REDIS_WAIT_TIMEOUT_S": "1"}
TRAIN_SPEC = {
    "name": "failover-bench",
    "model": {"builder": "bench.models:slow_mlp", "builder_kwargs": {"batch_delay_s": 0.05}},
    "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": 2000}},
    "fit": {"epochs": 100_000, "batch_size": 100, "validation_split": 0.25},
    "resume_from": "latest",
    "max_restarts": 100,
}
SUBMIT_SPEC = {
    "name": "submit-bench",
    "model": {"builder": "bench.models:mlp"},
    "data": {"loader": "bench.models:regression_data"},
    "fit": {"epochs": 1},
}


def _settings(url: str, run: u.Run, **kw: Any) -> Any:
    from jobs.settings import ClientSettings

    return ClientSettings(redis_url=url, storage_dir=run.dir / "storage", allowed_modules=u.ALLOWED.split(","),
                          redis_socket_timeout_s=3.0, **kw)


def throughput(run: u.Run, url: str, c: dict[str, Any]) -> None:
    from jobs.client import Client

    n = c["submit_n"]
    clients = {"no WAIT (MIN_REPLICAS=0)": Client(settings=_settings(url, run, redis_min_replicas=0)),
               "WAIT 1 (MIN_REPLICAS=auto)": Client(settings=_settings(url, run, redis_min_replicas="auto"))}
    res: dict[str, list[float]] = {}
    statuses: dict[str, str] = {}
    for i in range(c["reps"]):
        order = list(clients.items()) if i % 2 == 0 else list(reversed(clients.items()))
        for mode, client in order:
            for how in ("Client.submit (one by one)", "Client.submit_many"):
                client.r.flushdb()
                t0 = time.perf_counter()
                if how.startswith("Client.submit ("):
                    handles = [client.submit(SUBMIT_SPEC) for _ in range(n)]
                else:
                    handles = client.submit_many([SUBMIT_SPEC] * n)
                res.setdefault(f"{how}|{mode}", []).append(n / (time.perf_counter() - t0))
                statuses[mode] = handles[-1].durability
    rows = []
    for how in ("Client.submit (one by one)", "Client.submit_many"):
        base = u.median(res[f"{how}|no WAIT (MIN_REPLICAS=0)"])
        for mode in clients:
            v = res[f"{how}|{mode}"]
            rows.append({"method": how, "mode": mode, "jobs_per_s": u.median(v),
                         "vs_no_wait": u.ratio(u.median(v), base), "durability": statuses[mode],
                         "runs": ", ".join(f"{x:.0f}" for x in v)})
    run.table(f"submit throughput through the Sentinel URL ({n} jobs per run, {c['reps']} runs each, median)", rows)
    run.results["submit"] = {"n": n, "rates": res, "rows": rows}


def _progress(port: int) -> tuple[str, ...] | None:
    """The running job's progress fields as the node on ``port`` has them, if it is a primary now."""
    r = redis.Redis(port=port, socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        if r.info("replication").get("role") != "master":
            return None
        ids = r.smembers("traind:state:running")
        if not ids:
            return None
        vals = r.hmget(f"traind:job:{next(iter(ids)).decode()}", ["attempt", "epoch", "running_epoch", "batch"])
        return tuple((v or b"").decode() for v in vals)
    except (redis.RedisError, OSError):
        return None
    finally:
        r.close()


def _baseline(port: int) -> tuple[str, ...]:
    r = redis.Redis(port=port, socket_timeout=1)
    ids = r.smembers("traind:state:running")
    vals = r.hmget(f"traind:job:{next(iter(ids)).decode()}", ["attempt", "epoch", "running_epoch", "batch"])
    return tuple((v or b"").decode() for v in vals)


def failovers(run: u.Run, ha: Any, c: dict[str, Any]) -> None:
    from jobs.client import Client

    storage = run.dir / "storage"
    procs = u.Procs(run.dir / "logs")
    run.on_exit(procs.close)
    procs.worker(ha.url, storage, env=ENV)
    procs.supervisor(ha.url, storage, env=ENV)
    client = Client(settings=_settings(ha.url, run))
    job = client.submit(TRAIN_SPEC)
    u.wait_for(lambda: int(client.store.get(job.id, with_history=False).get("batch") or 0) > 0, 300,
               "the job to train (worker start)")
    rows: list[dict[str, Any]] = []
    for i in range(c["failovers"]):
        old = ha.current_primary()
        other = next(n for n in ha.nodes if n is not old)
        t0 = time.monotonic()
        old.signal(signal.SIGKILL)
        before = _baseline(other.port)  # what the replica had when the primary died
        promoted = progressed = None
        deadline = t0 + 120
        while progressed is None and time.monotonic() < deadline:
            now = time.monotonic() - t0
            if promoted is None and ha.primary_port() == other.port:
                promoted = now
            p = _progress(other.port)
            if p is not None and p != before:
                progressed = time.monotonic() - t0
                promoted = promoted if promoted is not None else progressed
            time.sleep(0.02)
        if progressed is None:
            raise RuntimeError(f"round {i + 1}: training did not progress within 120 s of the kill")
        after = _progress(other.port) or before
        rows.append({"round": i + 1, "kill_to_promoted_s": round(promoted, 3),
                     "kill_to_progress_s": round(progressed, 3), "attempt_before": before[0],
                     "attempt_after": after[0]})
        print(f"round {i + 1}: promoted after {promoted:.2f} s, training progressed after {progressed:.2f} s",
              flush=True)
        ha.revive(old, other)
    final = client.store.get(job.id, with_history=False)
    job.cancel()
    prom = [r["kill_to_promoted_s"] for r in rows]
    prog = [r["kill_to_progress_s"] for r in rows]
    summary = [{"what": "kill -> sentinels agree on the new primary", "p50_s": u.percentile(prom, 50),
                "p95_s": u.percentile(prom, 95), "max_s": max(prom), "n": len(prom)},
               {"what": "kill -> training progressing again (progress write on the new primary)",
                "p50_s": u.percentile(prog, 50), "p95_s": u.percentile(prog, 95), "max_s": max(prog), "n": len(prog)}]
    run.table("failover rounds", rows)
    run.table(f"primary SIGKILL -> training again ({len(rows)} failovers; job restarts over all rounds: "
              f"{final['restarts']})", summary)
    run.results["failover"] = {"rounds": rows, "summary": summary, "job_restarts": final["restarts"],
                               "job_attempt": final["attempt"]}


def body(run: u.Run) -> None:
    from tests.ha.cluster import DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, SentinelCluster

    c = CFG["smoke" if run.args.smoke else "full"]
    ha = SentinelCluster(run.dir / "ha").start()
    run.on_exit(ha.stop)
    run.results["settings"] = {"sentinel": {"down-after-milliseconds": DOWN_AFTER_MS,
                                            "failover-timeout": FAILOVER_TIMEOUT_MS, "quorum": 2, "sentinels": 3,
                                            "replicas": 1}, "traind_env": ENV}
    run.note(f"sentinel: down-after-milliseconds {DOWN_AFTER_MS}, failover-timeout {FAILOVER_TIMEOUT_MS}, quorum 2 "
             f"of 3, one replica; traind: {', '.join(f'{k}={v}' for k, v in ENV.items())}")
    throughput(run, ha.url.rsplit("/", 1)[0] + "/1", c)  # db 1: the training job of the next part lives in db 0
    failovers(run, ha, c)


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
