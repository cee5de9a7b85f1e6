"""Issue 21.2 and 21.6: no request's Redis work grows with the number of jobs, and every numeric query parameter is
bounded.

The Redis work of a request is measured twice: the commands the server executed for it (``INFO commandstats`` after
``CONFIG RESETSTAT``; commands a Lua script runs count too, so a script walking every job would show) and the reply
elements it read back (a counting connection: one SMEMBERS of every job shows). Both are the same with 5,000 jobs
as with 20,000.
"""

from __future__ import annotations

from typing import Any

import redis

from daemon.serve.metrics import TraindCollector
from jobs.contract import keys
from jobs.ops import admin
from jobs.redis.store import JobStore
from tests.serve.conftest import Served, slow_spec

QUEUES = ("traind.default.cpu.default", "traind.gpu-farm.gpu.high")


def add_jobs(store: JobStore, start: int, n: int) -> None:
    """``n`` jobs through the real CREATE script (pipelined): every 2nd on the gpu-farm queue, every 3rd cancelled
    later; names job-<i>, the very first job named "needle"."""
    for i in range(start, start + n, 2000):
        pipe = store.r.pipeline(transaction=False)
        for k in range(i, min(i + 2000, start + n)):
            jid = f"job{k:07d}"
            store.create(jid, {"id": jid, "name": "needle" if k == 0 else f"job-{k}", "queue": QUEUES[k % 2 == 0],
                               "spec": {"checkpoint": {"monitor": "val_acc"}}}, pipeline=pipe)
        pipe.execute()
    ids = [f"job{k:07d}" for k in range(start, start + n) if k % 3 == 0]
    for jid in ids:  # cancelled through the real TRANSITION script (the state indexes follow it)
        store.request_cancel(jid)


class CountingConnection(redis.Connection):
    """Counts the elements of every reply it reads (nested arrays included)."""

    elements = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        res = super().read_response(*args, **kwargs)
        CountingConnection.elements += _size(res)
        return res


def _size(v: Any) -> int:
    return sum(_size(x) for x in v) if isinstance(v, list) else 1


def counting(r: redis.Redis) -> redis.Redis:
    kw = r.connection_pool.connection_kwargs
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=CountingConnection, **kw))


def commands(r: redis.Redis, call: Any) -> tuple[int, int]:
    """(commands the server ran, reply elements read) for ``call()``."""
    admin._MONITORS.clear()  # a cold cache: the worst case
    r.config_resetstat()
    CountingConnection.elements = 0
    call()
    elements = CountingConnection.elements
    stats = r.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config")), elements


CASES: list[dict[str, Any]] = [
    {}, {"offset": 100}, {"state": "cancelled"}, {"state": "queued", "offset": 500}, {"queue": "gpu-farm"},
    {"name": "needle"}, {"name": "JOB-"}, {"state": "cancelled", "queue": "gpu-farm"},
    {"queue": "traind.gpu-farm.gpu.high"}, {"name": "job", "cursor": "job0001500"}, {"limit": 1000},
]


def test_filter_cost_is_independent_of_the_job_count(r: redis.Redis) -> None:
    store = JobStore(counting(r))
    collector = TraindCollector(store, lease_ttl_s=5.0)
    costs: dict[int, list[tuple[int, int]]] = {}
    add_jobs(store, 0, 5000)  # every index a filter scans holds more than SCAN_MAX jobs from here on
    for total in (5000, 20_000):
        if total > r.zcard(keys.JOBS_INDEX):
            add_jobs(store, r.zcard(keys.JOBS_INDEX), total - r.zcard(keys.JOBS_INDEX))
        assert r.zcard(keys.JOBS_INDEX) == total
        costs[total] = [commands(r, lambda c=c: admin.list_page(store, **c)) for c in CASES]
        costs[total].append(commands(r, lambda: list(collector.collect())))
    assert costs[5000] == costs[20_000], list(zip(CASES + [{"metrics": 1}], costs[5000], costs[20_000]))
    assert max(c for c, _ in costs[20_000]) <= 2200  # the largest: a 1000-row page, two reads per row


def test_results_are_exact_and_cursors_reach_every_match(r: redis.Redis) -> None:
    store = JobStore(r)
    add_jobs(store, 0, 5000)
    page = admin.list_page(store, state="cancelled", queue="gpu-farm", limit=1000)
    want = [f"job{k:07d}" for k in range(4999, -1, -1) if k % 3 == 0 and k % 2 == 0]
    assert page["scanned"] <= admin.SCAN_MAX and not page["exact"]
    found, cursor = [j["id"] for j in page["items"]], page["next_cursor"]
    while cursor:  # the listing continues where the bounded scan stopped
        page = admin.list_page(store, state="cancelled", queue="gpu-farm", limit=1000, cursor=cursor)
        found += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
    assert found == want
    assert admin.list_page(store, state="cancelled")["total"] == len([k for k in range(5000) if k % 3 == 0])
    assert admin.list_page(store, queue="gpu-farm")["total"] == len([k for k in range(5000) if k % 2 == 0])
    needle = admin.list_page(store, name="NEEDLE")
    assert needle["items"] == [] and needle["next_cursor"] and not needle["exact"]  # the oldest job: past the cap
    pages, cursor, hits = 0, None, []
    while True:
        pages += 1
        p = admin.list_page(store, name="needle", cursor=cursor)
        hits += [j["id"] for j in p["items"]]
        if not (cursor := p["next_cursor"]):
            break
    assert hits == ["job0000000"] and pages == -(-5000 // admin.SCAN_MAX)
    assert page["items"][0]["monitor"] == "val_acc"


def test_numeric_query_values_are_bounded(served: Served) -> None:
    with served.client() as c:
        jid = c.post("/api/v1/jobs", json={"spec": slow_spec()}).json()["id"]
        for path, params in [("/api/v1/jobs", {"offset": "1e23"}), ("/api/v1/jobs", {"offset": 10**12}),
                             ("/api/v1/jobs", {"limit": 10**30}), (f"/api/v1/jobs/{jid}/events", {"start": "1e23"}),
                             (f"/api/v1/jobs/{jid}/events", {"start": -(10**20)}),
                             ("/api/v1/jobs", {"cursor": "../x"}), ("/api/v1/jobs", {"cursor": "nosuchjob"})]:
            resp = c.get(path, params=params)
            assert resp.status_code == 422, (path, params, resp.status_code, resp.text)
        assert c.get("/api/v1/jobs", params={"offset": 10_000_000}).json()["items"] == []
        assert len(c.get(f"/api/v1/jobs/{jid}/events", params={"start": -1}).json()) == 1


def test_jobs_from_before_the_indexes_are_indexed_by_the_supervisor(r: redis.Redis, redis_url: str) -> None:
    from daemon.supervisor import Supervisor
    from jobs.settings import SupervisorSettings

    store = JobStore(r)
    add_jobs(store, 0, 2500)
    counts = r.hgetall(keys.IDX_COUNTS)
    r.delete(*r.keys(f"{keys.IDX_PREFIX}*"))  # as a database written before the indexes existed
    assert admin.list_page(store, state="cancelled")["total"] == 0
    sup = Supervisor(SupervisorSettings(redis_url=redis_url), connection=r)
    sup.step()
    assert r.get(keys.IDX_BACKFILL) != b"done"  # bounded: 1,000 jobs a pass
    for _ in range(10):  # ZSCAN's count is a hint: a few passes
        if r.get(keys.IDX_BACKFILL) == b"done":
            break
        sup.step()
    assert r.get(keys.IDX_BACKFILL) == b"done" and r.hgetall(keys.IDX_COUNTS) == counts
    assert admin.list_page(store, state="cancelled")["total"] == len([k for k in range(2500) if k % 3 == 0])
    assert r.zcard(keys.IDX_FINISHED) == len([k for k in range(2500) if k % 3 == 0])
    assert [j["id"] for j in admin.list_page(store, name="job-2499")["items"]] == ["job0002499"]
