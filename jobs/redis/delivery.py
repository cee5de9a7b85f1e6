"""Delivery: the one place a job's queue message is sent, a lost attempt handed back, a malformed message refused.

Every path that puts a job on its queue (submit, a worker's graceful preemption, a supervisor's requeue of a lost
worker or re-delivery of a lost message, the benchmarks) goes through these functions, so the order that makes a
delivery durable is written once: state transition first (the record says ``requeued`` with its next attempt and
sits in ``pending`` with score 0), then the RQ message, then ``pending`` is stamped delivered. Whoever dies in
between leaves score 0 behind, and the next supervisor step enqueues it.

>>> # deliver(store, job_id, attempt=1, queue="traind.default.cpu.default")
>>> # requeue(store, job_id, attempt=1, queue=q, kind=EventKind.REQUEUED, msg="worker lost", fields={"restarts": 1})
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from jobs.contract import keys
from jobs.contract.events import EventKind
from jobs.contract.queue import Delivery, enqueue
from jobs.contract.states import JobState
from jobs.errors import FencedError, IllegalTransitionError, JobNotFoundError
from jobs.redis.store import JobStore

log = logging.getLogger("traind.delivery")


def deliver(store: JobStore, job_id: str, attempt: int, queue: str, when_ms: int | None = None) -> str:
    """Send ``attempt``'s message on ``queue`` and mark the job delivered (at ``when_ms``, Redis clock; now by
    default). Returns the RQ message id. A duplicate message is harmless: the claim checks state and attempt."""
    rq_id = enqueue(store.r, job_id, attempt, queue)
    store.mark_delivered(job_id, when_ms)
    return rq_id


def deliver_many(store: JobStore, jobs: Sequence[tuple[str, int, str]]) -> None:
    """:func:`deliver` for several ``(job_id, attempt, queue)`` with pipelined round trips."""
    if not jobs:
        return
    pipe = store.r.pipeline(transaction=False)
    for job_id, attempt, queue in jobs:
        enqueue(store.r, job_id, attempt, queue, pipeline=pipe)
    pipe.execute()
    now = store.now_ms()
    pipe = store.r.pipeline(transaction=False)
    for job_id, _, _ in jobs:
        pipe.zadd(keys.PENDING, {job_id: now}, xx=True)  # only while still pending: same rule as mark_delivered
    pipe.execute()


def requeue(
    store: JobStore,
    job_id: str,
    *,
    attempt: int,
    queue: str,
    kind: EventKind,
    msg: str,
    fields: dict[str, Any] | None = None,
    token: str | None = None,
    require_lease_expired: bool = False,
    retry: bool = False,
    now_ms: int | None = None,
    level: str = "warning",
    event_extra: dict[str, Any] | None = None,
) -> int:
    """Hand ``attempt`` back: transition it to ``requeued`` as attempt ``attempt + 1``, then deliver that attempt.

    Fenced by ``attempt`` and, when given, the attempt's ``token`` (a worker requeueing its own attempt);
    ``require_lease_expired`` makes it a no-op for a worker that renewed its lease meanwhile (a supervisor);
    ``retry`` requeues a failed or cancelled job instead of a running one (an operator's retry).
    Raises FencedError / IllegalTransitionError / JobNotFoundError when the transition is refused (nothing is
    enqueued then). Returns ``requeued_at`` (Redis clock, ms).
    """
    now = store.now_ms() if now_ms is None else int(now_ms)
    store.transition(
        job_id, JobState.REQUEUED, attempt=attempt, token=token, require_lease_expired=require_lease_expired,
        retry=retry,
        fields={"attempt": attempt + 1, "requeued_at": now, "token": None, **(fields or {})},
        event_msg=msg, kind=kind, event_fields={"attempt": attempt + 1, **(event_extra or {})}, level=level,
    )
    # Dying here is safe: the transition left the job in `pending` with score 0; the next supervisor step delivers.
    deliver(store, job_id, attempt + 1, queue)
    return now


def reject(store: JobStore, d: Delivery) -> bool:
    """A malformed message costs its job (when its id names one), never the worker; True when a job was failed.

    Only the delivery the message was for, and only while nobody trains it: a garbled duplicate must never fail a
    job that a healthy worker is running.
    """
    log.error("rejected message: %s", d.error)
    job_id, attempt = d.guess_job_id(), d.guess_attempt()
    if job_id is None or attempt is None:
        return False
    try:
        store.transition(job_id, JobState.FAILED, attempt=attempt, only_from=(JobState.QUEUED, JobState.REQUEUED),
                         fields={"error": f"malformed queue message: {d.error}"},
                         event_msg=f"failed: malformed queue message ({d.error})", level="error")
    except (JobNotFoundError, IllegalTransitionError, FencedError):
        return False
    return True
