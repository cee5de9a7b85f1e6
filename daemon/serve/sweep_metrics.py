"""``/metrics`` for sweeps: trials by state (queued, running, requeued, succeeded, pruned, failed, cancelled) and
sweeps by state, over the newest 1,000 sweeps in Redis, counted at scrape time. No sweep or job id is a label.

>>> # for metric in collect(store): ...   (yielded by daemon.serve.metrics.TraindCollector)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from jobs.redis.store import JobStore
from jobs.sweep import records
from jobs.sweep.records import SweepStore

MAX_SWEEPS = 1000  # the newest sweeps are counted: a scrape stays bounded however many have accumulated
TRIAL_STATES = ("queued", "running", "requeued", *records.TRIAL_DONE)


def collect(store: JobStore) -> Iterator[Metric]:
    sweeps = SweepStore(store.r)
    active = set(sweeps.active())
    by_state: Counter[str] = Counter()
    trials: Counter[str] = Counter()
    for sid in sweeps.ids(MAX_SWEEPS):
        try:
            if sid in active:  # trials in flight: their job's state (queued/running/requeued)
                st = records.status(sweeps, sid)
                by_state[st["state"]] += 1
                trials.update(t["state"] for t in st["trials"])
            else:
                by_state[sweeps.get(sid).state] += 1
                trials.update(t.state for t in sweeps.trials(sid)[0].values())
        except (ValueError, KeyError):
            by_state["malformed"] += 1
    g = GaugeMetricFamily("traind_sweep_trials", "Trials of all sweeps by state (pruned: stopped by the pruner).",
                          labels=["state"])
    for s in TRIAL_STATES:
        g.add_metric([s], trials.get(s, 0))
    yield g
    g = GaugeMetricFamily("traind_sweeps", "Sweeps by state.", labels=["state"])
    for s in (*records.SWEEP_STATES, *(["malformed"] if by_state.get("malformed") else [])):
        g.add_metric([s], by_state.get(s, 0))
    yield g
