"""Every Redis key traind uses, in one place."""

from __future__ import annotations

PREFIX = "traind"

JOBS_INDEX = f"{PREFIX}:jobs"  # zset job_id -> created (ms)
LEASES = f"{PREFIX}:leases"  # zset job_id -> lease expiry (ms, Redis clock)
PENDING = f"{PREFIX}:pending"  # zset job_id -> last delivery (ms); 0 = needs a queue message
WORKERS = f"{PREFIX}:workers"  # zset worker_id -> last heartbeat (ms)
SUPERVISORS = f"{PREFIX}:supervisors"  # zset host-pid -> end of its last pass (ms, Redis clock)
RQ_FUNC = "worker.execute.train"  # the name RQ records; RQ never imports it (traind's worker pops messages itself)


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def token(job_id: str) -> str:
    """String: the running attempt's fencing token (a capability; kept out of the status hash tools print)."""
    return f"{PREFIX}:job:{job_id}:token"


def history(job_id: str) -> str:
    """Hash epoch(1-based) -> metrics JSON: a redone epoch replaces its entry."""
    return f"{PREFIX}:job:{job_id}:history"


def checkpoints(job_id: str) -> str:
    """Hash epoch -> committed checkpoint manifest JSON (the authoritative checkpoint index)."""
    return f"{PREFIX}:job:{job_id}:ckpts"


def events(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def state_index(state: str) -> str:
    return f"{PREFIX}:state:{state}"


def idempotency(client_key: str) -> str:
    return f"{PREFIX}:idem:{client_key}"


def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def rq_queue_name(queue: str, device: str, priority: str) -> str:
    """RQ queue for a job: one per (queue, device, priority), e.g. ``traind.default.cpu.high``."""
    return f"{PREFIX}.{queue}.{device}.{priority}"


def rq_job_id(job_id: str, attempt: int) -> str:
    """The RQ message id of one delivery attempt."""
    return f"{job_id}-a{attempt}"
