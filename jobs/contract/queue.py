"""Queue messages on RQ (JSON serializer, never pickle) and how workers take them.

RQ is the queue: jobs are enqueued with ``rq.Queue.enqueue_call`` and stored as RQ jobs. traind's worker pops
message ids itself (BLPOP) instead of running RQ's ``Worker``, so RQ's registries, intermediate queue and
maintenance (``rq info``, rq-dashboard, ``StartedJobRegistry.cleanup``) never see a running training job and
cannot fail it; traind's lease and supervisor own liveness.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rq import Queue
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from jobs.contract import keys
from jobs.contract.fair import FairPolicy, fair_pop
from jobs.contract.ids import JOB_ID_RE, parse_rq_job_id
from jobs.errors import MessageError


class Message(BaseModel):
    """The payload of one delivery: which job, which attempt."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: attempt "1" or true is refused, not coerced
    job_id: str = Field(pattern=JOB_ID_RE.pattern)
    attempt: int = Field(ge=1, le=1_000_000)


@dataclass
class Delivery:
    """A popped RQ message: ``message`` is None when it was malformed (``error`` says why)."""

    rq_id: str
    queue: str
    message: Message | None
    error: str | None = None

    def guess_job_id(self) -> str | None:
        """Best-effort job id from the RQ id (``<job_id>-a<attempt>``) for failing a malformed message."""
        return parse_rq_job_id(self.rq_id)[0]

    def guess_attempt(self) -> int | None:
        """The attempt number in the RQ id, or None."""
        return parse_rq_job_id(self.rq_id)[1]


def rq_queue(r: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=r, serializer=JSONSerializer)


def enqueue(
    r: redis.Redis, job_id: str, attempt: int, queue_name: str, pipeline: redis.client.Pipeline | None = None
) -> str:
    """Put one delivery of ``job_id``/``attempt`` on its RQ queue; returns the RQ job id."""
    rq_id = keys.rq_job_id(job_id, attempt)
    rq_queue(r, queue_name).enqueue_call(
        func=keys.RQ_FUNC,
        args=[job_id, attempt],
        job_id=rq_id,
        timeout=-1,  # training must never inherit RQ's 180 s default timeout
        result_ttl=0,
        description=f"traind job {job_id} attempt {attempt}",
        pipeline=pipeline,
    )
    return rq_id


def queue_key(name: str) -> str:
    return Queue.redis_queue_namespace_prefix + name


def pop(r: redis.Redis, queue_names: list[str], timeout_s: float, fair: FairPolicy | None = None) -> Delivery | None:
    """Take the next message from the first non-empty queue (priority order), or None on timeout.

    With ``fair`` (a :class:`~jobs.contract.fair.FairPolicy`), the message is chosen among each queue's head by
    owner share and limits (:func:`jobs.contract.fair.fair_pop`) instead of the oldest one.
    """
    qkeys = [queue_key(n) for n in queue_names]
    if fair is not None:
        return _fair_pop(r, qkeys, timeout_s, fair)
    res = r.blpop(qkeys, timeout=max(timeout_s, 0.01))
    if res is None:
        return None
    return _delivery(r, res[0].decode(), res[1].decode(errors="replace"))


def _fair_pop(r: redis.Redis, qkeys: list[str], timeout_s: float, fair: FairPolicy) -> Delivery | None:
    kind, qkey, raw_id, _ = fair_pop(r, qkeys, fair)
    if kind == "empty":
        # Nothing queued: block as BLPOP does (no polling), then put what arrived back at its head and choose
        # among everything there. A crash between the two loses that message like a crash between a pop and its
        # claim always could: the supervisor's delivery check re-enqueues it (it is still pending).
        res = r.blpop(qkeys, timeout=max(timeout_s, 0.01))
        if res is None:
            return None
        r.lpush(res[0], res[1])
        kind, qkey, raw_id, _ = fair_pop(r, qkeys, fair)
    if kind == "blocked":  # every queued job's owner is at its limit: look again after a short wait
        time.sleep(min(timeout_s, fair.poll_s))
        return None
    if kind != "take" or qkey is None or raw_id is None:
        return None
    return _delivery(r, qkey, raw_id)


def _delivery(r: redis.Redis, qkey: str, raw_id: str) -> Delivery:
    """The popped message ``raw_id`` of ``qkey``, parsed (a malformed one comes back with ``error`` set)."""
    qname = qkey.removeprefix(Queue.redis_queue_namespace_prefix)
    try:
        job = Job.fetch(raw_id, connection=r, serializer=JSONSerializer)
        args = job.args
    except NoSuchJobError:
        # A re-delivery of the same attempt shares its RQ id with the first message, and whichever was popped first
        # deleted the shared hash; the id itself names job and attempt, and the claim drops stale duplicates.
        msg = _message_from_rq_id(raw_id)
        if msg is not None:
            return Delivery(raw_id, qname, msg)
        return Delivery(raw_id, qname, None, f"unreadable RQ message {raw_id!r}: no such RQ job")
    except DeserializationError as e:  # pickle, garbage bytes, or JSON that is not RQ's 4-tuple: never unpickled
        _delete_rq_job(r, raw_id)
        cause = e.__cause__ or e
        return Delivery(raw_id, qname, None, f"unreadable RQ message {raw_id!r}: expected JSON job data for "
                        f"{keys.RQ_FUNC}(job_id, attempt) (traind never unpickles), received something else: "
                        f"{type(cause).__name__}: {str(cause)[:200]}")
    except Exception as e:  # anything in a planted message must cost that message only
        _delete_rq_job(r, raw_id)
        return Delivery(raw_id, qname, None, f"unreadable RQ message {raw_id!r}: {type(e).__name__}: {e}")
    try:
        if job.func_name != keys.RQ_FUNC or not isinstance(args, (list, tuple)) or len(args) != 2:
            raise MessageError(f"expected {keys.RQ_FUNC}(job_id, attempt), received {job.func_name}{tuple(args)!r}")
        msg = Message(job_id=args[0], attempt=args[1])
    except (ValidationError, MessageError, TypeError) as e:
        _delete_rq_job(r, raw_id)
        return Delivery(raw_id, qname, None, f"malformed RQ message {raw_id!r}: {e}")
    _delete_rq_job(r, raw_id)
    return Delivery(raw_id, qname, msg)


def _message_from_rq_id(rq_id: str) -> Message | None:
    """``<job_id>-a<attempt>`` (see :func:`jobs.contract.ids.rq_job_id`) -> Message, or None if it is not one."""
    job_id, attempt = parse_rq_job_id(rq_id)
    if job_id is None or attempt is None:
        return None
    try:
        return Message(job_id=job_id, attempt=attempt)
    except ValidationError:
        return None


def _delete_rq_job(r: redis.Redis, rq_id: str) -> None:
    # The RQ job is only the delivery; traind's own record is the job. Remove the RQ hash so RQ tools stay clean.
    r.delete(Job.key_for(rq_id))


def queue_contents(r: redis.Redis, queue_name: str) -> set[str]:
    return {m.decode() for m in r.lrange(queue_key(queue_name), 0, -1)}
