"""What compaction of finished jobs saves (issue 25): Redis memory per finished job before and after, and its rate.

A real redis-server; ``--jobs`` finished jobs of 50-99 epochs written by bench.scale's preload (the store's own
scripts: history, an event per epoch, three checkpoint manifests), then compacted as the supervisor does
(``jobs.redis.packed.compact_step``). Prints ``used_memory`` per job as written and compacted, ``MEMORY USAGE``
(all samples) per key kind, and jobs compacted per second. bench.scale reports the same per size (on a sample).

    python -m bench.compaction [--jobs 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from bench import _util as u
from bench._scale_preload import Templates, preload
from bench.scale import SPEC
from jobs.client import Client
from jobs.contract import keys
from jobs.redis import packed
from jobs.redis.store import JobStore
from testkit.cluster import RedisServer

KINDS = {"record": keys.job, "history": keys.history, "events": keys.events, "ckpts": keys.checkpoints,
         "packed": keys.packed}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _usage(r: redis.Redis, ids: list[str]) -> dict[str, float]:
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        for f in KINDS.values():
            pipe.memory_usage(f(jid), samples=0)
    res = pipe.execute()
    return {k: sum(res[i * len(KINDS) + j] or 0 for i in range(len(ids))) / len(ids) for j, k in enumerate(KINDS)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000)
    a = p.parse_args(argv)
    print("uptime before:", _uptime())
    d = Path(tempfile.mkdtemp(prefix="bench-compaction-"))
    srv = RedisServer(d).start()
    try:
        r = redis.Redis.from_url(srv.url)
        client = Client(settings=u.client_settings(srv.url, d / "s"))
        store = JobStore(r)
        m0 = int(r.info("memory")["used_memory"])
        preload(store, client._fields(client._validate(SPEC), "x", client.owner), a.jobs, templates=Templates())
        ids = store.list_ids()
        m1, use1 = int(r.info("memory")["used_memory"]), _usage(r, ids)
        t, n = time.perf_counter(), 0
        while k := packed.compact_step(r, store.now_ms(), 0, store.events_max, 500):
            n += k
        dt = time.perf_counter() - t
        m2, use2 = int(r.info("memory")["used_memory"]), _usage(r, ids)
        print(f"{a.jobs} finished jobs (50-99 epochs, an event per epoch, 3 checkpoint manifests), {n} compacted "
              f"in {dt:.2f} s: {n / dt:.0f} jobs/s")
        print(f"used_memory per finished job: as written {(m1 - m0) / a.jobs:,.0f} B, compacted "
              f"{(m2 - m0) / a.jobs:,.0f} B")
        for name, use in (("as written", use1), ("compacted", use2)):
            print(f"MEMORY USAGE per job, {name}: " + ", ".join(f"{k} {v:,.0f} B" for k, v in use.items())
                  + f"; total {sum(use.values()):,.0f} B")
    finally:
        srv.stop()
    print("uptime after:", _uptime())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
