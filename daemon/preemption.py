"""Which running job to preempt for a waiting one of higher priority: a pure decision over typed inputs.

The supervisor reads a :class:`Cluster` from Redis (:mod:`jobs.redis.preempt`) and asks :func:`decide` once a pass.
A waiting job preempts a running one when, and only when:

* no free live worker would take it (free: live, not drained, running nothing; one free worker serves one waiting
  job, highest priority first);
* a running job of strictly lower priority sits on a worker that serves the waiting job's queue (logical queue,
  device kind, enough devices), is ``preemptible``, has run its current attempt at least ``min_run_ms`` (no
  flapping), and has no preemption pending already;
* on that worker's pop order the waiting job's queue comes first among the waiting ones and before the victim's own
  queue (the freed worker must pop the waiting job, never the victim again);
* the waiting job has no victim pending already (one preemption per waiting job at a time).

Among the candidates: the lowest priority, then the most recently started (it loses the least progress since its
last epoch-end checkpoint, and has the shortest claim on the worker).

>>> w = Worker("w1", "cpu", 1, ("default",))
>>> low = Running("j-low", "w1", "traind.default.cpu.low", started_ms=0)
>>> high = Waiting("j-high", "traind.default.cpu.high", since_ms=5_000)
>>> decide(Cluster(workers=[w], running=[low], waiting=[high]), now_ms=70_000, min_run_ms=60_000).requests
[Preemption(victim='j-low', worker='w1', for_job='j-high', victim_priority='low', for_priority='high')]
>>> decide(Cluster(workers=[w], running=[low], waiting=[high]), now_ms=30_000, min_run_ms=60_000).held
[Held(job='j-high', victim='j-low', reason='min_run')]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from jobs.contract import keys

RANK = {p: i for i, p in enumerate(keys.PRIORITIES)}  # high 0, default 1, low 2: a larger rank is a lower priority


def _rank(priority: str) -> int:
    return RANK.get(priority, len(RANK))  # an unknown priority ranks below low: it never preempts anything


@functools.lru_cache(maxsize=4096)  # a few queue names, parsed for every job of every pass
def priority_of(rq_queue: str) -> str | None:
    """The priority part of a traind RQ queue name, None for another name.

    >>> priority_of("traind.default.gpu-x2.high"), priority_of("junk")
    ('high', None)
    """
    parsed = keys.parse_rq_queue_name(rq_queue)
    return None if parsed is None or parsed["priority"] not in RANK else str(parsed["priority"])


@dataclass(frozen=True)
class Worker:
    """A live worker: its device kind (``cpu``/``gpu``), device count and logical queues."""

    id: str
    kind: str
    devices: int
    queues: tuple[str, ...]
    drained: bool = False

    def pop_order(self) -> list[str]:
        """The RQ queues it pops, first to last (the worker's own order: :func:`keys.worker_queue_names`)."""
        return keys.worker_queue_names(list(self.queues), self.kind, max(self.devices, 1))


@dataclass(frozen=True)
class Running:
    """A running job: where, on which RQ queue (its priority), since when (its current attempt's claim)."""

    id: str
    worker: str
    queue: str
    started_ms: int
    preemptible: bool = True
    pending_for: str | None = None  # the waiting job a preemption of this one was requested for, still pending

    @property
    def priority(self) -> str:
        return priority_of(self.queue) or "high"  # unreadable: treated as the highest, so it is never a victim


@dataclass(frozen=True)
class Waiting:
    """A job waiting on its RQ queue since ``since_ms`` (queued or requeued)."""

    id: str
    queue: str
    since_ms: int

    @property
    def priority(self) -> str:
        return priority_of(self.queue) or "low"  # unreadable: the lowest, so it never preempts


@dataclass(frozen=True)
class Cluster:
    """What the supervisor saw in one pass."""

    workers: list[Worker] = field(default_factory=list)
    running: list[Running] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)


@dataclass(frozen=True)
class Preemption:
    """Preempt ``victim`` (on ``worker``) so that ``for_job`` can run."""

    victim: str
    worker: str
    for_job: str
    victim_priority: str
    for_priority: str


@dataclass(frozen=True)
class Held:
    """A waiting job that a lower-priority running job blocks, not preempted now: ``reason`` is ``min_run`` (the
    victim ran less than the minimum) or ``not_preemptible`` (every candidate opted out)."""

    job: str
    victim: str
    reason: str


@dataclass
class Decision:
    requests: list[Preemption] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)


def decide(cluster: Cluster, now_ms: int, min_run_ms: int) -> Decision:
    """The preemptions to request now (at most one per waiting job and per victim), and the ones held back."""
    out = Decision()
    live = {w.id: w for w in cluster.workers if not w.drained}
    orders = {wid: {q: i for i, q in enumerate(w.pop_order())} for wid, w in live.items()}  # queue -> pop position
    busy = {r.worker for r in cluster.running}
    free = [wid for wid in live if wid not in busy]
    pending = {r.pending_for for r in cluster.running if r.pending_for}
    taken: set[str] = {r.id for r in cluster.running if r.pending_for}  # victims already being preempted
    waiting = sorted(cluster.waiting, key=lambda j: (_rank(j.priority), j.since_ms, j.id))
    unserved: list[Waiting] = []
    for job in waiting:  # free workers first: a job one of them will pop preempts nothing
        wid = next((w for w in free if job.queue in orders[w]), None)
        if wid is not None:
            free.remove(wid)
        elif job.id not in pending:
            unserved.append(job)
    waiting_queues = {j.queue for j in unserved} | {j.queue for j in waiting if j.id in pending}
    best = min((_rank(j.priority) for j in unserved), default=len(RANK))
    # Only a running job below the best waiting priority, on a live worker, can be a victim: a short list.
    victims = [r for r in cluster.running if _rank(r.priority) > best and r.worker in orders and r.id not in taken]
    for job in unserved:
        if _rank(job.priority) >= _rank(keys.PRIORITIES[-1]):
            continue  # the lowest priority preempts nobody
        cands: list[Running] = []
        young: Running | None = None
        opted_out: Running | None = None
        for r in victims:
            order = orders[r.worker]
            pos = order.get(job.queue)
            if pos is None or r.id in taken or _rank(r.priority) <= _rank(job.priority):
                continue
            # The freed worker pops the first non-empty queue of its order: the job's, not the victim's own (after
            # its requeue) nor another waiting queue's.
            if order.get(r.queue, len(order)) <= pos:
                continue
            if any(order.get(q, pos) < pos for q in waiting_queues if q != job.queue):
                continue
            if not r.preemptible:
                opted_out = opted_out or r
            elif now_ms - r.started_ms < min_run_ms:
                young = young or r
            else:
                cands.append(r)
        if cands:
            victim = max(cands, key=lambda r: (_rank(r.priority), r.started_ms, r.id))
            taken.add(victim.id)
            out.requests.append(Preemption(victim.id, victim.worker, job.id, victim.priority, job.priority))
        elif young is not None:
            out.held.append(Held(job.id, young.id, "min_run"))
        elif opted_out is not None:
            out.held.append(Held(job.id, opted_out.id, "not_preemptible"))
    return out


def withdrawn(cluster: Cluster, still_waiting: set[str]) -> list[Running]:
    """Running jobs whose pending preemption no longer has a reason: the job it was for stopped waiting (another
    worker took it, or it was cancelled)."""
    return [r for r in cluster.running if r.pending_for and r.pending_for not in still_waiting]
