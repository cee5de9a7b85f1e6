"""Fairness: two owners' running shares when one submits first (issue 24, item 5).

On a real stack (redis-server, two warm workers), owner ``alice`` submits ``jobs`` paced jobs and then owner ``bob``
submits as many (the worst case for a FIFO queue: bob's jobs sit behind all of alice's). Each job trains one epoch of
``batches`` batches that sleep ``delay_s`` each (light on CPU, as device compute is). Run twice: with fair share (the
default) and with ``TRAIND_FAIR_SHARE=false`` (the oldest job first) for comparison.

Share: each owner's running time (sum over its jobs of the overlap of ``[started_at, finished_at]`` with the window)
over both owners', in the **contended window** from the first start to the moment the first owner's last job ends
(after it only one owner has work). Goal: the two shares within 10 percentage points. Also per tenth of the window
(the largest gap), and when bob's first job started. Then, without workers, what one pop costs with fair share
(2,000 queued jobs of 10 owners) against plain BLPOP.

    python -m bench.fairness [--smoke] [--json PATH]
"""

from __future__ import annotations

import time
from typing import Any

from bench import _util as u

NAME = "fairness"
CFG = {
    "full": {"jobs": 20, "batches": 40, "batch_size": 32, "delay_s": 0.05, "workers": 2, "queued": 2000, "pops": 400},
    "smoke": {"jobs": 3, "batches": 4, "batch_size": 32, "delay_s": 0.01, "workers": 2, "queued": 50, "pops": 20},
}
OWNERS = ("alice", "bob")
SLICES = 10
GOAL_PP = 10.0


def spec(c: dict[str, Any], name: str) -> dict[str, Any]:
    n_train = c["batches"] * c["batch_size"]
    return {"name": name, "model": {"builder": "bench.models:paced_mlp",
                                    "builder_kwargs": {"batch_delay_s": c["delay_s"]}},
            "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": int(n_train / 0.8), "dim": 4}},
            "fit": {"epochs": 1, "batch_size": c["batch_size"], "validation_split": 0.2, "seed": 1},
            "checkpoint": {"monitor": "val_loss", "save_weights_only": True}}


def overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def shares(spans: dict[str, list[tuple[float, float]]], lo: float, hi: float) -> dict[str, float] | None:
    """Each owner's share of the running time in ``[lo, hi]`` (None when nothing ran there)."""
    busy = {o: sum(overlap(a, b, lo, hi) for a, b in spans[o]) for o in OWNERS}
    total = sum(busy.values())
    return None if total <= 0 else {o: busy[o] / total for o in OWNERS}


def run_mode(run: u.Run, c: dict[str, Any], fair: bool) -> dict[str, Any]:
    from jobs.contract import keys

    stack = u.start_stack(run)
    env = {"TRAIND_FAIR_SHARE": "true" if fair else "false"}
    pool = u.Pool(stack.procs, stack.client.r, stack.url, stack.storage, env=env)
    workers = [pool.spawn(f"worker-{'fair' if fair else 'fifo'}-{i}") for i in range(c["workers"])]
    for p in workers:
        pool.wait_warm(p)
    r = stack.client.r
    t_submit = time.time()
    ids = {o: [h.id for h in stack.client.submit_many([spec(c, f"{o}-{i}") for i in range(c["jobs"])], owner=o)]
           for o in OWNERS}
    every = [j for o in OWNERS for j in ids[o]]

    def done() -> bool:
        states = [r.hget(keys.job(j), "state") for j in every]
        if b"failed" in states or b"cancelled" in states:
            raise RuntimeError(f"a job ended badly: {u.log_tail(workers[0])}")
        return all(s == b"succeeded" for s in states)

    u.wait_for(done, 3600, "every job to finish", 0.5)
    spans: dict[str, list[tuple[float, float]]] = {}
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for o in OWNERS:
        spans[o] = []
        for j in ids[o]:
            s, f, w = r.hmget(keys.job(j), "started_at", "finished_at", "worker")
            spans[o].append((int(s) / 1000, int(f) / 1000))
            by_worker.setdefault(w.decode(), []).append(spans[o][-1])
    # a worker's idle time from one job's end to its next claim (what the pop adds, with the job's own wrap-up)
    idle = [b[0] - a[1] for xs in by_worker.values() for a, b in zip(sorted(xs), sorted(xs)[1:])]
    t0 = min(a for o in OWNERS for a, _ in spans[o])
    t_end = max(b for o in OWNERS for _, b in spans[o])
    hi = min(max(b for _, b in spans[o]) for o in OWNERS)
    whole = shares(spans, t0, hi) or {o: 0.0 for o in OWNERS}
    step = (hi - t0) / SLICES
    gaps = []
    for k in range(SLICES):
        sh = shares(spans, t0 + k * step, t0 + (k + 1) * step)
        if sh is not None:
            gaps.append(abs(sh["alice"] - sh["bob"]) * 100)
    bob_first = min(a for a, _ in spans["bob"]) - t0
    mean_wait = {o: sum(a for a, _ in spans[o]) / len(spans[o]) - t_submit for o in OWNERS}
    for p in list(pool.alive):
        pool.kill(p)
    starts = sorted((a, o) for o in OWNERS for a, _ in spans[o])
    return {
        "mode": "fair share" if fair else "FIFO (TRAIND_FAIR_SHARE=false)", "jobs": f"{c['jobs']} + {c['jobs']}",
        "workers": c["workers"], "wall_s": round(t_end - t0, 1), "window_s": round(hi - t0, 1),
        "alice_share": round(whole["alice"], 3), "bob_share": round(whole["bob"], 3),
        "gap_pp": round(abs(whole["alice"] - whole["bob"]) * 100, 1), "goal_pp": GOAL_PP,
        "max_tenth_gap_pp": round(max(gaps), 1) if gaps else None,
        "bob_first_start_s": round(bob_first, 1),
        "alice_mean_wait_s": round(mean_wait["alice"], 1), "bob_mean_wait_s": round(mean_wait["bob"], 1),
        "job_s_median": round(u.median(b - a for o in OWNERS for a, b in spans[o]) or 0, 2),
        "idle_between_jobs_s_median": round(u.median(idle) or 0, 2),
        "start_order": "".join(o[0] for _, o in starts),  # a = alice, b = bob, in the order the jobs started
    }


def pop_cost(run: u.Run, c: dict[str, Any]) -> list[dict[str, Any]]:
    """What one pop costs (no workers): ``queued`` jobs of 10 owners, 2 of them running, ``pops`` pops timed with
    fair share (the Lua choice over the queue's head) and with plain BLPOP, alternating by batches of 10."""
    from jobs.contract import keys
    from jobs.contract.fair import FairPolicy
    from jobs.contract.ids import new_job_id
    from jobs.contract.queue import pop
    from jobs.contract.states import JobState
    from jobs.redis.delivery import deliver_many
    from jobs.redis.store import JobStore

    stack = u.start_stack(run)
    store = JobStore(stack.client.r)
    q = keys.rq_queue_name("default", "cpu", "default")
    queues = keys.worker_queue_names(["default"], "cpu", 1)
    ids = [new_job_id() for _ in range(c["queued"])]
    for k, jid in enumerate(ids):
        store.create(jid, {"id": jid, "queue": q, "attempt": 1, "owner": f"owner{k % 10}"})
    deliver_many(store, [(jid, 1, q) for jid in ids])
    for jid in ids[:2]:
        store.r.lrem(f"rq:queue:{q}", 0, keys.rq_job_id(jid, 1))
        store.transition(jid, JobState.RUNNING, attempt=1, lease_ttl_ms=600_000, fields={"token": "t"})
    times: dict[str, list[float]] = {"fair share": [], "FIFO (BLPOP)": []}
    for b in range(c["pops"] // 10):
        for mode in (("fair share", "FIFO (BLPOP)") if b % 2 == 0 else ("FIFO (BLPOP)", "fair share")):
            for _ in range(5):  # 5 of each per batch: both modes see the same queue depths
                t = time.perf_counter()
                d = pop(store.r, queues, 0.5, FairPolicy() if mode == "fair share" else None)
                times[mode].append((time.perf_counter() - t) * 1000)
                assert d is not None and d.message is not None, d
    return [{"pop": mode, "queued_at_start": c["queued"], "owners": 10, "pops": len(xs), **{
        f"{k}_ms": v for k, v in u.summary(xs, 3).items() if k in ("median", "p95", "max")}}
        for mode, xs in times.items()]


def body(run: u.Run) -> None:
    c = CFG["smoke" if run.args.smoke else "full"]
    rows = [run_mode(run, c, fair=True), run_mode(run, c, fair=False)]
    for row in rows:
        print(f"  {row}", flush=True)
    run.table("2 owners (alice submits first, then bob), 2 workers, paced 1-epoch jobs: running shares in the "
              "contended window (first start to the first owner's last finish)", rows)
    cost = pop_cost(run, c)
    run.table("one pop, no workers: fair share's Lua choice over the queue head (256 messages) vs BLPOP, "
              "including the message parse both do", cost)
    run.results.update({"config": c, "rows": rows, "pop_cost": cost, "goal_met": rows[0]["gap_pp"] <= GOAL_PP})


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
