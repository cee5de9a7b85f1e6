"""The preemption decision (daemon/preemption.py) as a pure function: typed inputs, an injected clock."""

from __future__ import annotations

from daemon.preemption import Cluster, Held, Running, Waiting, Worker, decide, withdrawn

MIN_RUN = 60_000
NOW = 1_000_000


def q(priority: str, queue: str = "default", device: str = "cpu") -> str:
    return f"traind.{queue}.{device}.{priority}"


def run(job: str, worker: str, priority: str, started: int = 0, **kw: object) -> Running:
    return Running(job, worker, q(priority), started_ms=started, **kw)  # type: ignore[arg-type]


def cpu(wid: str, *queues: str) -> Worker:
    return Worker(wid, "cpu", 1, tuple(queues) or ("default",))


def victims(c: Cluster, now: int = NOW) -> list[tuple[str, str]]:
    return [(p.victim, p.for_job) for p in decide(c, now, MIN_RUN).requests]


def test_high_job_preempts_the_low_one_on_the_only_worker() -> None:
    c = Cluster([cpu("w1")], [run("lo", "w1", "low")], [Waiting("hi", q("high"), 5)])
    (p,) = decide(c, NOW, MIN_RUN).requests
    assert (p.victim, p.worker, p.for_job, p.victim_priority, p.for_priority) == ("lo", "w1", "hi", "low", "high")


def test_default_preempts_low_but_not_equal_or_higher_priorities() -> None:
    assert victims(Cluster([cpu("w1")], [run("lo", "w1", "low")], [Waiting("d", q("default"), 5)])) == [("lo", "d")]
    for running, waiting in (("high", "high"), ("default", "default"), ("high", "default"), ("low", "low"),
                             ("default", "low")):
        c = Cluster([cpu("w1")], [run("r", "w1", running)], [Waiting("w", q(waiting), 5)])
        assert victims(c) == [], (running, waiting)


def test_a_free_worker_that_serves_the_queue_means_no_preemption() -> None:
    c = Cluster([cpu("w1"), cpu("w2")], [run("lo", "w1", "low")], [Waiting("hi", q("high"), 5)])
    assert victims(c) == []
    # ... but a free worker of another queue, or a drained one, does not take it
    other = Worker("w2", "cpu", 1, ("other",))
    assert victims(Cluster([cpu("w1"), other], [run("lo", "w1", "low")], [Waiting("hi", q("high"), 5)])) == [
        ("lo", "hi")]
    drained = Worker("w2", "cpu", 1, ("default",), drained=True)
    assert victims(Cluster([cpu("w1"), drained], [run("lo", "w1", "low")], [Waiting("hi", q("high"), 5)])) == [
        ("lo", "hi")]


def test_one_free_worker_serves_one_waiting_job() -> None:
    c = Cluster([cpu("w1"), cpu("w2")], [run("lo", "w1", "low")],
                [Waiting("hi1", q("high"), 5), Waiting("hi2", q("high"), 6)])
    assert victims(c) == [("lo", "hi2")]  # the older one gets the free worker


def test_no_flapping_before_the_minimum_run_time() -> None:
    c = Cluster([cpu("w1")], [run("lo", "w1", "low", started=NOW - MIN_RUN + 1)], [Waiting("hi", q("high"), 5)])
    d = decide(c, NOW, MIN_RUN)
    assert d.requests == [] and d.held == [Held("hi", "lo", "min_run")]
    assert victims(c, now=NOW + 1) == [("lo", "hi")]  # the injected clock: exactly at the minimum


def test_not_preemptible_is_never_chosen() -> None:
    c = Cluster([cpu("w1")], [run("lo", "w1", "low", preemptible=False)], [Waiting("hi", q("high"), 5)])
    d = decide(c, NOW, MIN_RUN)
    assert d.requests == [] and d.held == [Held("hi", "lo", "not_preemptible")]
    both = Cluster([cpu("w1"), cpu("w2")], [run("lo", "w1", "low", preemptible=False), run("lo2", "w2", "low")],
                   [Waiting("hi", q("high"), 5)])
    assert victims(both) == [("lo2", "hi")]


def test_one_victim_per_waiting_job_lowest_priority_then_most_recent() -> None:
    workers = [cpu("w1"), cpu("w2"), cpu("w3")]
    running = [run("old-low", "w1", "low", started=0), run("new-low", "w2", "low", started=500_000),
               run("newest-default", "w3", "default", started=900_000)]
    assert victims(Cluster(workers, running, [Waiting("hi", q("high"), 5)])) == [("new-low", "hi")]
    two = [Waiting("hi", q("high"), 5), Waiting("hi2", q("high"), 6)]
    assert victims(Cluster(workers, running, two)) == [("new-low", "hi"), ("old-low", "hi2")]


def test_a_pending_preemption_is_not_repeated() -> None:
    running = [run("lo", "w1", "low", pending_for="hi"), run("lo2", "w2", "low")]
    c = Cluster([cpu("w1"), cpu("w2")], running, [Waiting("hi", q("high"), 5)])
    assert victims(c) == []  # hi already has its victim; lo2 keeps running
    c2 = Cluster([cpu("w1"), cpu("w2")], running, [Waiting("hi", q("high"), 5), Waiting("hi2", q("high"), 6)])
    assert victims(c2) == [("lo2", "hi2")]  # and lo is not taken twice


def test_the_worker_must_serve_the_queue_device_and_device_count() -> None:
    gpu2 = "traind.default.gpu-x2.high"
    c = Cluster([Worker("g1", "gpu", 1, ("default",))], [Running("lo", "g1", q("low", device="gpu"), 0)],
                [Waiting("big", gpu2, 5)])
    assert victims(c) == []  # a one-GPU worker cannot run a two-GPU job
    c = Cluster([Worker("g2", "gpu", 2, ("default",))], [Running("lo", "g2", q("low", device="gpu"), 0)],
                [Waiting("big", gpu2, 5)])
    assert victims(c) == [("lo", "big")]
    c = Cluster([cpu("w1")], [run("lo", "w1", "low")], [Waiting("hi", q("high", device="gpu"), 5)])
    assert victims(c) == []  # a CPU worker for a GPU job
    c = Cluster([cpu("w1", "a")], [run("lo", "w1", "low")], [Waiting("hi", q("high", queue="b"), 5)])
    assert victims(c) == []  # a worker of another logical queue


def test_never_when_the_freed_worker_would_pop_something_else_first() -> None:
    # The victim needs both devices: requeued on gpu-x2.low, which a 2-device worker pops before gpu.high.
    c = Cluster([Worker("g2", "gpu", 2, ("default",))], [Running("lo", "g2", "traind.default.gpu-x2.low", 0)],
                [Waiting("hi", q("high", device="gpu"), 5)])
    assert victims(c) == []
    # A worker of queues a,b pops a.default before b.high: preempting for b.high would start the a.default job.
    c = Cluster([cpu("w1", "a", "b")], [run("lo", "w1", "low")],
                [Waiting("hi", q("high", queue="b"), 5), Waiting("d", q("default", queue="a"), 6)])
    assert victims(c) == [("lo", "d")]


def test_running_jobs_on_unknown_workers_are_not_victims() -> None:
    c = Cluster([cpu("w1")], [run("lo", "gone", "low"), run("x", "w1", "high")], [Waiting("hi", q("high"), 5)])
    assert victims(c) == []


def test_unreadable_priorities_neither_preempt_nor_are_preempted() -> None:
    c = Cluster([cpu("w1")], [Running("r", "w1", "junk", 0)], [Waiting("hi", q("high"), 5)])
    assert victims(c) == []
    c = Cluster([cpu("w1")], [run("lo", "w1", "low")], [Waiting("w", "junk", 5)])
    assert victims(c) == []


def test_withdrawn_when_the_job_it_was_for_no_longer_waits() -> None:
    running = [run("lo", "w1", "low", pending_for="hi"), run("lo2", "w2", "low", pending_for="gone")]
    assert [r.id for r in withdrawn(Cluster(running=running), {"hi"})] == ["lo2"]
