"""``/metrics`` per owner (issue 24): jobs running and queued (queued + requeued) per owner, from the per (state,
owner) counts the Lua scripts keep (``keys.IDX_OWNER_COUNTS``): one HGETALL per scrape, whatever the number of jobs.
Owners are the label (a bounded name, ``jobs/contract/owners.py``); at most :data:`MAX_OWNERS` are reported.

>>> # for metric in collect(store): ...   (yielded by daemon.serve.metrics.TraindCollector)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from jobs.contract import keys
from jobs.contract.owners import OWNER_RE
from jobs.contract.records import to_int
from jobs.redis.store import JobStore

MAX_OWNERS = 1000  # owners with the most running, then queued, jobs: a scrape stays bounded


def collect(store: JobStore) -> Iterator[Metric]:
    running: Counter[str] = Counter()
    queued: Counter[str] = Counter()
    for field, n in store.r.hgetall(keys.IDX_OWNER_COUNTS).items():
        st, _, owner = field.decode(errors="replace").partition("\t")
        if not OWNER_RE.fullmatch(owner) or to_int(n) <= 0:
            continue  # a planted field: not a label
        if st == "running":
            running[owner] += to_int(n)
        elif st in ("queued", "requeued"):
            queued[owner] += to_int(n)
    owners = sorted(set(running) | set(queued), key=lambda o: (-running[o], -queued[o], o))[:MAX_OWNERS]
    run = GaugeMetricFamily("traind_owner_jobs_running", "Running jobs per owner.", labels=["owner"])
    wait = GaugeMetricFamily("traind_owner_jobs_queued", "Queued or requeued jobs per owner.", labels=["owner"])
    for o in sorted(owners):
        run.add_metric([o], running[o])
        wait.add_metric([o], queued[o])
    yield run
    yield wait
