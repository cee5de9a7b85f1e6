"""``traind serve`` under load: live viewers vs training speed, API latency at 10,000 jobs, start-up time.

* start -> first response: ``traind serve`` as a subprocess (interpreter start included) until ``/healthz`` and an
  authenticated ``/api/v1/jobs`` answer; three starts.
* epoch time with and without 100 live SSE viewers, in one run: one warm worker trains the same job twice (same
  seed, same data), first with no viewer, then with 90 viewers on the job's stream and 10 on the jobs-list stream
  (the viewers are asyncio httpx clients in this process). 1,000 parked jobs are in the list throughout. Epoch 1
  (tracing) is left out of the means. The serve process's CPU time is recorded for both phases.
* API latency at 10,000 jobs: sequential requests (one client) for list pages (first, deep offset, state filter,
  name filter over all jobs, 1,000-row page) and job status with history; p50/p95/max.

    python -m bench.serve [--smoke] [--json PATH]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from typing import Any

import httpx
import psutil

from bench import _util as u
from daemon.stack import free_port

NAME = "serve"
TOKEN = "bench-token-0f3a9c"
CFG = {
    "full": {"parked": 1000, "total": 10_000, "viewers_job": 90, "viewers_list": 10, "epochs": 8, "n": 20_000,
             "requests": 200, "starts": 3, "rounds": 2},
    "smoke": {"parked": 50, "total": 200, "viewers_job": 5, "viewers_list": 2, "epochs": 3, "n": 600,
              "requests": 10, "starts": 1, "rounds": 1},
}


def spec(c: dict[str, Any], name: str, queue: str = "default") -> dict[str, Any]:
    return {"name": name, "resources": {"queue": queue},
            "model": {"builder": "examples.regression:build_model", "builder_kwargs": {"units": 64}},
            "data": {"loader": "examples.regression:load_data", "loader_kwargs": {"n": c["n"]}},
            "fit": {"epochs": c["epochs"], "batch_size": 64, "validation_split": 0.2, "seed": 3}}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def start_serve(run: u.Run, stack: u.Stack, port: int, name: str) -> tuple[Any, float, float, float]:
    """Start ``traind serve``; returns (process, s to /healthz, s to the first authenticated list, CPU s used by
    then: what the start costs on an idle machine, where wall time on a loaded one also counts waiting for a core)."""
    env = {"TRAIND_API_TOKEN": TOKEN, "TRAIND_PORT": str(port)}
    t0 = time.perf_counter()
    p = stack.procs.traind("serve", "--redis-url", stack.url, "--storage", str(stack.storage), env=env, name=name)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=2) as h:
        def ok(path: str, auth: bool) -> bool:
            try:
                hdr = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
                return h.get(base + path, headers=hdr).status_code == 200
            except httpx.HTTPError:
                return False

        u.wait_for(lambda: ok("/healthz", False) or p.poll() is not None, 60, "serve to answer", interval=0.005)
        if p.poll() is not None:
            raise RuntimeError(f"traind serve exited:\n{u.log_tail(p)}")
        t_health = time.perf_counter() - t0
        u.wait_for(lambda: ok("/api/v1/jobs?limit=1", True), 30, "the first list", interval=0.005)
        t_list = time.perf_counter() - t0
        ct = psutil.Process(p.pid).cpu_times()
    return p, t_health, t_list, ct.user + ct.system


class Viewers:
    """``n_job`` SSE viewers of one job and ``n_list`` of the jobs list, on an asyncio loop in a thread."""

    def __init__(self, base: str, job_id: str, n_job: int, n_list: int) -> None:
        self.base, self.job_id = base, job_id
        self.paths = [f"/api/v1/jobs/{job_id}/stream"] * n_job + ["/api/v1/stream"] * n_list
        self.counts = [0] * len(self.paths)
        self.connected = 0
        self.loop = asyncio.new_event_loop()
        self.t = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self._stop: asyncio.Event | None = None

    async def _one(self, i: int, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", self.base + self.paths[i]) as resp:
            self.connected += 1
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    self.counts[i] += 1

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        limits = httpx.Limits(max_connections=len(self.paths) + 5)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=None,
                                     limits=limits) as client:
            tasks = [asyncio.create_task(self._one(i, client)) for i in range(len(self.paths))]
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def start(self) -> None:
        self.t.start()
        u.wait_for(lambda: self.connected == len(self.paths), 60, "all viewers to connect")

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.t.join(30)


def epoch_times(store: Any, job_id: str) -> list[float]:
    return [h["time_s"] for h in store.history(job_id)]


def train(stack: u.Stack, c: dict[str, Any], name: str) -> str:
    h = stack.client.submit(spec(c, name))
    u.wait_for(lambda: stack.client.store.raw(h.id)["state"] in ("succeeded", "failed"), 900, f"{name} to finish",
               interval=0.2)
    st = stack.client.store.raw(h.id)
    if st["state"] != "succeeded":
        raise RuntimeError(f"{name} {st['state']}: {st.get('error')}")
    return h.id


def body(run: u.Run) -> None:
    c = CFG["smoke" if run.args.smoke else "full"]
    stack = u.start_stack(run)
    store = stack.client.store

    # -- start-up ------------------------------------------------------------------------------------------------
    starts = []
    for i in range(c["starts"]):
        load = u.loadavg()
        p, t_health, t_list, cpu = start_serve(run, stack, free_port(), f"serve-start{i}")
        u.Procs.kill(p)
        p.wait(30)
        starts.append({"start": i + 1, "to_healthz_s": round(t_health, 3), "to_first_list_s": round(t_list, 3),
                       "cpu_s_by_then": round(cpu, 3), "load_1m": load[0] if load else None})
    run.results["startup"] = starts
    run.table("traind serve: process start -> first response (interpreter start included)", starts)

    # -- viewers vs training ---------------------------------------------------------------------------------------
    stack.client.submit_many([spec(c, f"parked-{i}", queue="parked") for i in range(c["parked"])])
    port = free_port()
    serve, _, _, _ = start_serve(run, stack, port, "serve")
    sp = psutil.Process(serve.pid)
    base = f"http://127.0.0.1:{port}"
    w = stack.procs.worker(stack.url, stack.storage, name="worker")
    u.wait_warm(store.r, w)
    train(stack, c, "warmup")  # the first job of a worker pays one-off costs: not measured

    rows, quiet_all, loud_all, counts = [], [], [], []
    quiet = loud = ""
    for rnd in range(1, c["rounds"] + 1):  # alternate (A B A B): drifting machine load hits both phases alike
        cpu0 = sum(sp.cpu_times()[:2])
        quiet = train(stack, c, f"no-viewers-{rnd}")
        cpu_quiet = sum(sp.cpu_times()[:2]) - cpu0
        # A short blocker holds the worker while the measured job waits behind it and every viewer connects.
        blocker = stack.client.submit({**spec(c, "blocker"), "fit": {**spec(c, "b")["fit"], "epochs": 2}})
        u.wait_for(lambda b=blocker: store.raw(b.id)["state"] == "running", 300, "the blocker", interval=0.05)
        h = stack.client.submit(spec(c, f"with-viewers-{rnd}"))
        viewers = Viewers(base, h.id, c["viewers_job"], c["viewers_list"])
        viewers.start()
        if store.raw(h.id)["state"] != "queued":
            raise RuntimeError("the measured job started before the viewers connected; use more blocker epochs")
        cpu0 = sum(sp.cpu_times()[:2])
        u.wait_for(lambda h=h: store.raw(h.id)["state"] in ("succeeded", "failed"), 900, "with-viewers to finish",
                   interval=0.2)
        cpu_viewers = sum(sp.cpu_times()[:2]) - cpu0
        time.sleep(0.5)  # let the last events reach the viewers
        viewers.stop()
        loud = h.id
        q, v = epoch_times(store, quiet)[1:], epoch_times(store, loud)[1:]
        quiet_all += q
        loud_all += v
        counts += viewers.counts[:c["viewers_job"]]
        for label, n, xs, cpu in (("no viewers", 0, q, cpu_quiet), ("live viewers", len(viewers.paths), v,
                                                                     cpu_viewers)):
            rows.append({"round": rnd, "run": label, "viewers": n, "epochs": len(xs),
                         "mean_epoch_s": round(statistics.mean(xs), 4),
                         "median_epoch_s": round(statistics.median(xs), 4), "serve_cpu_s": round(cpu, 2)})
    summary = [{"run": "no viewers", "epochs": len(quiet_all), "mean_epoch_s": round(statistics.mean(quiet_all), 4),
                "median_epoch_s": round(statistics.median(quiet_all), 4)},
               {"run": f"{c['viewers_job'] + c['viewers_list']} live viewers", "epochs": len(loud_all),
                "mean_epoch_s": round(statistics.mean(loud_all), 4),
                "median_epoch_s": round(statistics.median(loud_all), 4)}]
    slowdown = statistics.median(loud_all) / statistics.median(quiet_all) - 1
    run.results["viewers"] = {"rows": rows, "summary": summary, "median_slowdown_pct": round(100 * slowdown, 1),
                              "events_per_job_viewer_min": min(counts), "events_per_job_viewer_max": max(counts),
                              "jobs_in_list": len(store.list_ids())}
    run.table(f"epoch time (epochs 2..{c['epochs']} of each job) without and with live SSE viewers, per round; "
              f"{len(store.list_ids())} jobs in the list", rows)
    run.table("all rounds", summary)
    run.note(f"median epoch time with viewers vs without: {100 * slowdown:+.1f} %; each job viewer got "
             f"{min(counts)}-{max(counts)} events (snapshot, status, epoch, events)")

    # -- API latency at 10,000 jobs ----------------------------------------------------------------------------------
    more = c["total"] - len(store.list_ids())
    for i in range(0, more, 1000):
        stack.client.submit_many([spec(c, f"bulk-{i + k}", queue="parked") for k in range(min(1000, more - i))])
    ids = store.list_ids()
    lat_rows = []
    cases = {
        "list first page (50)": lambda: "/api/v1/jobs?limit=50",
        "list deep page (offset 5000)": lambda: "/api/v1/jobs?limit=50&offset=5000",
        "list state=succeeded": lambda: "/api/v1/jobs?state=succeeded&limit=50",
        "list name filter (all jobs)": lambda: "/api/v1/jobs?name=with-viewers&limit=50",
        "list 1000 rows": lambda: "/api/v1/jobs?limit=1000",
        "status (history)": lambda: f"/api/v1/jobs/{random.choice([quiet, loud, *ids[:200]])}",
    }
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as hc:
        for label, path in cases.items():
            hc.get(path()).raise_for_status()
            ts = []
            for _ in range(c["requests"]):
                t0 = time.perf_counter()
                hc.get(path()).raise_for_status()
                ts.append((time.perf_counter() - t0) * 1000)
            lat_rows.append({"request": label, "n": len(ts), "p50_ms": round(pct(ts, 50), 2),
                             "p95_ms": round(pct(ts, 95), 2), "max_ms": round(max(ts), 2)})
    run.results["latency"] = {"jobs": len(ids), "rows": lat_rows}
    run.table(f"API latency with {len(ids)} jobs (one sequential client, keep-alive)", lat_rows)
    run.results["serve_rss_mb"] = round(sp.memory_info().rss / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
