"""``/metrics`` for priority preemption (issue 24), from the counters the supervisor's preemption pass keeps in
``keys.METRICS_COUNTERS`` (daemon/preemptor.py): preemptions requested, and passes that held one back by reason.
Done preemptions (the victim checkpointed and went back to the queue) are ``traind_requeues{reason="preempted"}``.

>>> # for metric in collect(telemetry.read_counters(r)): ...   (yielded by daemon.serve.metrics.TraindCollector)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, Metric

HELD_REASONS = ("min_run", "not_preemptible")  # daemon.preemption.Held.reason: a fixed set, so a bounded label


def collect(counters: Mapping[str, float]) -> Iterator[Metric]:
    yield CounterMetricFamily("traind_preemptions_requested", "Running jobs a supervisor flagged to yield to a "
                              "waiting job of higher priority (checkpoint at the next batch, then requeue).",
                              value=counters.get("preemptions:requested", 0.0))
    held = CounterMetricFamily("traind_preemptions_held", "Supervisor passes in which a waiting job was blocked by "
                               "a lower-priority running job that could not be preempted yet, by reason: min_run "
                               "(ran less than TRAIND_PREEMPT_MIN_RUN_S) or not_preemptible (its spec opts out).",
                               labels=["reason"])
    for reason in HELD_REASONS:
        held.add_metric([reason], counters.get(f"preemptions_held:{reason}", 0.0))
    yield held
