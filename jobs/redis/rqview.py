"""RQ's own tools show the truth: a running traind job appears as *executing* in ``rq info`` and rq-dashboard.

traind's worker pops RQ messages itself (see :mod:`jobs.contract.queue`), so RQ's registries would never see a running
job. On every claim this module records an RQ job hash for the running attempt (status ``started``, its worker,
JSON data, no ``meta``: readable with RQ's default pickle serializer too, so rq-dashboard can show it) and puts it in
the queue's ``StartedJobRegistry`` with an infinite score, so RQ's ``cleanup`` never calls it abandoned and fails
it. When the attempt leaves ``running`` (finished, failed, cancelled, requeued) both are removed. traind's lease and
supervisor, not RQ, decide liveness; this is a view only and every error here is ignored.

No RQ *execution* is recorded in the worker's execution index, on purpose: RQ 3 would then name the job as the
worker's current job, and rq-dashboard (default pickle serializer) renders a current job's call string by unpickling
its JSON data, which answers HTTP 500 for the whole workers page. The worker shows as busy; the job shows in its
queue's started registry. tests/serve/test_rq_dashboard.py runs the real rq-dashboard against this view.

>>> # on_transition(r, "ab12", "running", "queued", attempt=1, worker="host-1")
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import redis

from jobs.contract import keys

log = logging.getLogger("traind.rqview")


def _marker(job_id: str) -> str:
    return f"{keys.job(job_id)}:rq"  # "<rq queue>\n<registry member>\n<rq job id>" of the running attempt


def on_transition(r: redis.Redis, job_id: str, to: str, previous: str, attempt: int | None = None,
                  worker: str | None = None) -> None:
    """Mirror a state change into RQ's registries (best effort)."""
    try:
        if previous == "running":
            _stopped(r, job_id)
        if to == "running":
            _started(r, job_id, attempt, worker)
    except Exception as e:  # a view: never costs the transition it mirrors
        log.debug("rq view of job %s not updated: %s", job_id, e)


def _started(r: redis.Redis, job_id: str, attempt: int | None, worker: str | None) -> None:
    from rq.job import Job, JobStatus
    from rq.registry import StartedJobRegistry
    from rq.serializers import JSONSerializer

    queue, att = r.hmget(keys.job(job_id), ["queue", "attempt"])
    if queue is None:
        return
    qname = queue.decode()
    attempt = attempt or int(att or 1)
    rq_id = keys.rq_job_id(job_id, attempt)
    job = Job.create(func=keys.RQ_FUNC, args=[job_id, attempt], id=rq_id, connection=r, serializer=JSONSerializer,
                     origin=qname, timeout=-1, result_ttl=0,
                     description=f"traind job {job_id} attempt {attempt} (running on {worker or '?'})")
    job._status = JobStatus.STARTED  # saved by job.save below
    job.started_at = job.enqueued_at = datetime.now(timezone.utc)
    job.worker_name = worker
    member = f"{rq_id}:traind-{attempt}"  # StartedJobRegistry entries are <job id>:<execution id>
    pipe = r.pipeline()
    job.save(pipeline=pipe)
    pipe.zadd(StartedJobRegistry(qname, connection=r).key, {member: "+inf"})  # never "abandoned"
    pipe.set(_marker(job_id), f"{qname}\n{member}\n{rq_id}")
    pipe.execute()


def _stopped(r: redis.Redis, job_id: str) -> None:
    from rq.job import Job
    from rq.registry import StartedJobRegistry

    raw = r.get(_marker(job_id))
    if raw is None:
        return
    qname, member, rq_id = raw.decode().split("\n")
    pipe = r.pipeline()
    pipe.zrem(StartedJobRegistry(qname, connection=r).key, member)
    pipe.delete(Job.key_for(rq_id), _marker(job_id))
    pipe.execute()


def _rq_worker_key(worker_id: str) -> str:
    return f"rq:worker:traind-{worker_id}"


def register_worker(pipe: redis.client.Pipeline, worker_id: str, info: dict[str, object], rq_queues: list[str],
                    ttl_ms: int) -> None:
    """Queue (on ``pipe``) a heartbeat of a traind worker in RQ's worker registry, so ``rq info`` and rq-dashboard
    list it (busy while it trains; its job is in the queue's started registry). It expires with traind's own worker
    record."""
    key = _rq_worker_key(worker_id)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    job = info.get("job")
    fields = {"hostname": str(info.get("host", "")), "pid": str(info.get("pid", "")),
              "state": "busy" if job else "idle", "last_heartbeat": now, "queues": ",".join(rq_queues),
              "successful_job_count": str(info.get("jobs_done", 0))}
    pipe.hsetnx(key, "birth", now)
    pipe.hset(key, mapping=fields)
    pipe.pexpire(key, ttl_ms)
    pipe.sadd("rq:workers", key)
    for q in rq_queues:
        pipe.sadd(f"rq:workers:{q}", key)


def unregister_worker(r: redis.Redis, worker_id: str, rq_queues: list[str]) -> None:
    key = _rq_worker_key(worker_id)
    pipe = r.pipeline()
    pipe.delete(key)
    pipe.srem("rq:workers", key)
    for q in rq_queues:
        pipe.srem(f"rq:workers:{q}", key)
    pipe.execute()
