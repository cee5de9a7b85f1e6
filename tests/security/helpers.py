"""Helpers of the security suite: tiny specs, an in-process burst worker, and ways to plant data in Redis the way
anyone with write access to Redis could (bypassing :class:`jobs.client.Client` and its validation).
"""

from __future__ import annotations

import copy
import json
import signal
import zlib
from pathlib import Path
from typing import Any

import redis

from jobs.contract import keys
from jobs.contract.ids import new_job_id
from jobs.contract.queue import enqueue, queue_key
from jobs.redis.store import JobStore
from jobs.settings import WorkerSettings

QUEUE = keys.rq_queue_name("default", "cpu", "default")  # where a default-spec job is delivered
WORKER_LOG = "traind.worker"
MARKER_ENV = "SECURITY_TEST_MARKER"  # where planted code would write (tests/security/evil_mod.py reads it too)


def good_spec(name: str = "good", epochs: int = 2, **overrides: Any) -> dict[str, Any]:
    """A tiny, valid regression job (200 samples, 4 units); ``overrides`` replace whole sections."""
    spec: dict[str, Any] = {
        "name": name,
        "model": {"builder": "examples.regression:build_model", "builder_kwargs": {"units": 4}},
        "data": {"loader": "examples.regression:load_data", "loader_kwargs": {"n": 200}},
        "fit": {"epochs": epochs, "batch_size": 50, "validation_split": 0.25, "seed": 1},
        "max_restarts": 0,
    }
    spec.update(copy.deepcopy(overrides))
    return spec


def worker_settings(redis_url: str, storage: Path, **kw: Any) -> WorkerSettings:
    """Burst-mode settings with a short dequeue wait so a burst ends quickly once the queues are empty."""
    base: dict[str, Any] = {"redis_url": redis_url, "storage_dir": storage, "burst": True, "dequeue_timeout_s": 0.1}
    base.update(kw)
    return WorkerSettings(**base)


def make_worker(redis_url: str, storage: Path, **kw: Any) -> Any:
    """An in-process :class:`worker.runner.Worker` (TensorFlow is imported once per test process)."""
    from worker.runner import Worker

    return Worker(worker_settings(redis_url, storage, **kw))


def run_burst(redis_url: str, storage: Path, **kw: Any) -> Any:
    """Serve every queued message in-process until the queues are empty; returns the worker.

    ``Worker.run`` installs SIGTERM/SIGINT handlers in the main thread; they are restored afterwards so the test
    process keeps pytest's own.
    """
    w = make_worker(redis_url, storage, **kw)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert w.run() == 0
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return w


def plant_job(
    r: redis.Redis,
    spec: dict[str, Any] | str,
    *,
    job_id: str | None = None,
    send_message: bool = True,
    queue: str = QUEUE,
) -> str:
    """Record a job straight into Redis (no client-side validation) and, by default, deliver its message.

    ``spec`` may be a dict or the raw text stored in the record's ``spec`` field (e.g. invalid JSON).
    """
    job_id = job_id or new_job_id()
    epochs = spec.get("fit", {}).get("epochs", 1) if isinstance(spec, dict) else 1
    name = spec.get("name", "planted") if isinstance(spec, dict) else "planted"
    fields = {
        "id": job_id, "name": name, "spec": json.dumps(spec) if isinstance(spec, dict) else spec,
        "queue": queue, "attempt": 1, "restarts": 0, "preemptions": 0, "max_restarts": 0, "epoch": 0,
        "epochs": epochs if isinstance(epochs, int) else 1, "resume_from": "best", "device": "cpu",
    }
    store = JobStore(r)
    store.create(job_id, fields)
    if send_message:
        enqueue(r, job_id, 1, queue)
        store.mark_delivered(job_id)
    return job_id


def rq_payload(func: Any, args: Any, kwargs: Any = None) -> bytes:
    """RQ's JSON job data: ``[func_name, instance, args, kwargs]``."""
    return json.dumps([func, None, args, {} if kwargs is None else kwargs]).encode()


def plant_rq(
    r: redis.Redis, rq_id: str, data: bytes, *, compress: bool = False, queue: str = QUEUE, **fields: Any
) -> None:
    """Write an RQ job hash with arbitrary ``data`` (optionally zlib-compressed, as RQ stores it) and queue its id."""
    mapping: dict[str, Any] = {"data": zlib.compress(data) if compress else data, **fields}
    r.hset(f"rq:job:{rq_id}", mapping=mapping)
    r.rpush(queue_key(queue), rq_id)


def record(r: redis.Redis, job_id: str) -> dict[str, Any]:
    """The job's status as users see it (``traind status --json``)."""
    return JobStore(r).get(job_id, with_history=False)


def failed_with(r: redis.Redis, job_id: str) -> str:
    """Assert the job failed and return its user-visible ``error``."""
    rec = record(r, job_id)
    assert rec["state"] == "failed", f"job {job_id}: expected failed, got {rec['state']} ({rec.get('error')!r})"
    error = rec.get("error") or ""
    assert error, f"job {job_id} failed without an error message"
    return str(error)


def all_redis_text(r: redis.Redis) -> str:
    """Every key and value in the database as text (to grep for a leaked secret)."""
    out: list[str] = []
    for k in r.scan_iter(count=1000):
        out.append(k.decode(errors="replace"))
        t = r.type(k).decode()
        if t == "string":
            vals: list[Any] = [r.get(k)]
        elif t == "hash":
            vals = [x for kv in r.hgetall(k).items() for x in kv]
        elif t == "list":
            vals = r.lrange(k, 0, -1)
        elif t == "set":
            vals = list(r.smembers(k))
        elif t == "zset":
            vals = [m for m, _ in r.zrange(k, 0, -1, withscores=True)]
        else:
            vals = []
        for v in vals:
            if isinstance(v, bytes):
                try:
                    v = zlib.decompress(v)
                except zlib.error:
                    pass
                v = v.decode(errors="replace")
            out.append(str(v))
    return "\n".join(out)
