"""``/metrics``: a Prometheus collector that reads what workers and supervisors recorded in Redis at scrape time.

Measured where it happens: epoch seconds (worker, on each epoch's history write), checkpoint write seconds and
bytes (worker's checkpoint writer), requeues by reason and kill->requeue detection latency (supervisor; preemption
by the worker; retry by the operator), worker RSS/CPU/GPU memory (worker registry heartbeat). Counted at scrape:
jobs by state and queue, queue depth, workers alive. Labels come from small fixed sets or the fleet's hosts and
queues; never a job id.

>>> # registry = CollectorRegistry(); registry.register(TraindCollector(store, lease_ttl_s=5))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.serve import owner_metrics, preempt_metrics, sweep_metrics
from jobs.contract import keys
from jobs.contract.records import to_int
from jobs.contract.states import JobState
from jobs.ops import admin
from jobs.redis import telemetry
from jobs.redis.store import JobStore

_HELP = {
    "detection_seconds": "Time from a lost worker's last lease renewal to its job's requeue (supervisor).",
    "epoch_seconds": "Wall time of one training epoch (worker).",
    "checkpoint_write_seconds": "Time to write and fsync one checkpoint file and manifest (worker).",
    "checkpoint_bytes": "Size of one checkpoint file (worker).",
}


class TraindCollector(Collector):
    """Reads Redis on every scrape; holds no state of its own (several serve processes report the same)."""

    def __init__(self, store: JobStore, lease_ttl_s: float) -> None:
        self.store = store
        self.alive_s = 3 * lease_ttl_s

    def collect(self) -> Iterator[Metric]:
        r = self.store.r
        jobs = GaugeMetricFamily("traind_jobs", "Jobs by state and logical queue.", labels=["state", "queue"])
        # The per (state, queue) counts the Lua scripts keep (keys.IDX_COUNTS): a scrape costs one HGETALL of a
        # hash with a field per pair, whatever the number of jobs.
        counts: dict[str, Counter[str]] = {st.value: Counter() for st in JobState}
        for field, n in r.hgetall(keys.IDX_COUNTS).items():
            st, _, q = field.decode(errors="replace").partition("\t")
            if st in counts and to_int(n) > 0:
                counts[st][q or "unknown"] += to_int(n)
        for st in JobState:
            per_queue = counts[st.value]
            if not per_queue:
                jobs.add_metric([st.value, "default"], 0)
            for q, n in sorted(per_queue.items()):
                jobs.add_metric([st.value, q], n)
        yield jobs

        depth = GaugeMetricFamily("traind_queue_depth", "Messages waiting in each RQ queue.",
                                  labels=["queue", "device", "priority"])
        for q in admin.queues(self.store):
            depth.add_metric([q["queue"], q["device"], q["priority"]], q["depth"])
        yield depth

        workers = admin.workers(self.store)
        alive = [w for w in workers if w["heartbeat_age_s"] <= self.alive_s]
        yield GaugeMetricFamily("traind_workers_alive", "Workers whose heartbeat is fresh.", value=len(alive))
        busy = sum(1 for w in alive if w.get("job"))
        yield GaugeMetricFamily("traind_workers_busy", "Alive workers training a job.", value=busy)
        rss = GaugeMetricFamily("traind_worker_rss_bytes", "Resident memory of alive workers (sum per host/device).",
                                labels=["host", "device"])
        gpu = GaugeMetricFamily("traind_worker_gpu_memory_bytes", "TensorFlow GPU memory of alive workers.",
                                labels=["host", "device"])
        rss_sum: Counter[tuple[str, str]] = Counter()
        gpu_sum: Counter[tuple[str, str]] = Counter()
        for w in alive:
            k = (str(w.get("host", "")), str(w.get("device", "")))
            rss_sum[k] += float(w.get("rss_mb") or 0) * 2**20
            if w.get("gpu_mem_mb") is not None:
                gpu_sum[k] += float(w["gpu_mem_mb"]) * 2**20
        for k, v in sorted(rss_sum.items()):
            rss.add_metric(list(k), v)
        for k, v in sorted(gpu_sum.items()):
            gpu.add_metric(list(k), v)
        yield rss
        yield gpu

        counters = telemetry.read_counters(r)
        req = CounterMetricFamily("traind_requeues", "Jobs handed back to the queue, by reason.", labels=["reason"])
        for reason in (*telemetry.REQUEUE_REASONS, "other"):
            req.add_metric([reason], counters.get(f"requeues:{reason}", 0.0))
        yield req
        yield from preempt_metrics.collect(counters)  # traind_preemptions_requested, traind_preemptions_held{reason}
        yield from _goodput(self.store, counters)

        for name, help_ in _HELP.items():
            buckets, total, count = telemetry.read_histogram(r, name)
            h = HistogramMetricFamily(f"traind_{name}", help_)
            h.add_metric([], buckets, sum_value=total)
            yield h
        yield from sweep_metrics.collect(self.store)  # traind_sweep_trials{state}, traind_sweeps{state}
        yield from owner_metrics.collect(self.store)  # traind_owner_jobs_running{owner}, _queued{owner}


def _goodput(store: JobStore, counters: dict[str, float]) -> Iterator[Metric]:
    """Finished jobs' wall time lost per reason, the fleet's goodput ratio, drained (lemon) machines (issue 19)."""
    from jobs.redis import lemons
    from jobs.redis.badput import fleet_totals

    ratio, badput = fleet_totals(counters)
    bad = CounterMetricFamily("traind_badput_seconds", "Wall time of finished jobs not spent training productively, "
                              "by reason (queued, starting, checkpoint, redone, detection, restart).",
                              labels=["reason"])
    for reason, seconds in badput.items():
        bad.add_metric([reason], seconds)
    yield bad
    yield GaugeMetricFamily("traind_goodput_ratio", "Productive training time over wall time, all finished jobs.",
                            value=float("nan") if ratio is None else ratio)
    drained = GaugeMetricFamily("traind_machines_drained", "Machines (host/device) drained as lemons.",
                                labels=["host", "device"])
    for machine in lemons.drained(store.r):
        host, _, device = machine.partition("/")
        drained.add_metric([host, device], 1)
    yield drained
