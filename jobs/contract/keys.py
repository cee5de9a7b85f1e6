"""Every Redis key traind uses, in one place."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from jobs.contract.ids import rq_job_id as rq_job_id  # the RQ message id of one delivery: packed where job ids are

PREFIX = "traind"

JOBS_INDEX = f"{PREFIX}:jobs"  # zset job_id -> created (ms)
LEASES = f"{PREFIX}:leases"  # zset job_id -> lease expiry (ms, Redis clock)
PENDING = f"{PREFIX}:pending"  # zset job_id -> last delivery (ms); 0 = needs a queue message
WORKERS = f"{PREFIX}:workers"  # zset worker_id -> last heartbeat (ms)
SUPERVISORS = f"{PREFIX}:supervisors"  # zset host-pid -> end of its last pass (ms, Redis clock)
RQ_QUEUES = "rq:queues"  # RQ's set of queue names (RQ's key, read by `traind queues` and /metrics)
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


def packed(job_id: str) -> str:
    """String: a finished job's history and events, compacted (jobs/redis/packed.py); absent until then."""
    return f"{PREFIX}:job:{job_id}:packed"


COMPACT_CURSOR = f"{PREFIX}:compact:cursor"  # string "<finished ms> <job id>": how far compaction walked IDX_FINISHED


def state_index(state: str) -> str:
    """Set of the job ids in ``state`` (the Lua scripts extend ``state_index("")``)."""
    return f"{PREFIX}:state:{state}"


IDEMPOTENCY_PREFIX = f"{PREFIX}:idem:"


def idempotency(client_key: str) -> str:
    """String: the job id a ``client_key`` created (deleted with that job)."""
    return f"{IDEMPOTENCY_PREFIX}{client_key}"


def no_idempotency(job_id: str) -> str:
    """The key CREATE declares in the idempotency slot when there is no client key (never written)."""
    return f"{job(job_id)}:noidem"


# Named API tokens of `traind serve` (jobs/ops/tokens.py): only a sha256 of each token is stored, never the token.
# Outside `traind:*` on purpose: the documented worker/submit/read-only ACL users (docs/security.md, `~traind:*`)
# can neither read these nor mint a token; only serve's and the token admin's users get `~traind-auth:*`.
AUTH_PREFIX = f"{PREFIX}-auth"
API_TOKENS = f"{AUTH_PREFIX}:tokens"  # hash name -> JSON {"role", "sha256", "created_ms"}
API_TOKENS_VERSION = f"{AUTH_PREFIX}:tokens:version"  # counter bumped by every add/revoke: serve re-reads on change
API_TOKENS_USED = f"{AUTH_PREFIX}:tokens:used"  # hash name -> last use (ms), written at most once a minute per serve


# The filter indexes, kept in step by the Lua scripts (which extend IDX_PREFIX exactly as the functions below do):
# they bound every list/filter request, /metrics and purge by the page, never by the number of jobs.
IDX_PREFIX = f"{PREFIX}:idx:"
IDX_NAMES = f"{IDX_PREFIX}names"  # hash job_id -> name, lowercased (the name filter reads a chunk per command)
IDX_FINISHED = f"{IDX_PREFIX}finished"  # zset job_id -> finished (ms): purge and retention take the oldest
IDX_COUNTS = f"{IDX_PREFIX}counts"  # hash "<state>\t<logical queue>" -> jobs (/metrics' traind_jobs)
IDX_BACKFILL = f"{IDX_PREFIX}backfill"  # string: ZSCAN cursor of indexing jobs created before the indexes; "done"


def state_zindex(state: str) -> str:
    """Zset job_id -> created (ms) of the jobs in ``state``: the list's state filter, paged newest first."""
    return f"{IDX_PREFIX}state:{state}"


def queue_index(logical_queue: str) -> str:
    """Zset job_id -> created (ms) of the jobs of one logical queue (``default``, not ``traind.default.cpu.high``)."""
    return f"{IDX_PREFIX}queue:{logical_queue}"


NOTIFY_CHANNEL = f"{PREFIX}:notify"  # pub/sub: small JSON notes that a job changed (jobs.redis.telemetry)
METRICS_COUNTERS = f"{PREFIX}:metrics:counters"  # hash name[:label] -> number
RETENTION_LOCK = f"{PREFIX}:retention:lock"  # string with a TTL: one supervisor purges per interval


def metrics_histogram(name: str) -> str:
    """Hash bucket -> count, plus ``sum`` and ``count``, of one histogram (jobs.redis.telemetry.BUCKETS)."""
    return f"{PREFIX}:metrics:hist:{name}"


def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


PRIORITIES = ("high", "default", "low")  # the order a worker pops them in


def rq_queue_name(queue: str, device: str, priority: str, devices: int = 1) -> str:
    """RQ queue for a job: one per (queue, device, priority), e.g. ``traind.default.cpu.high``; a job that trains on
    ``devices`` > 1 devices of one worker (``resources.gpus``) gets its own, ``traind.default.gpu-x2.high``, which only
    workers with at least that many devices listen on (the name of a one-device queue is unchanged).

    The device part stays one dot-free segment, so every ``traind.<queue>.<device>.<priority>`` parser keeps working.
    """
    if devices < 1:
        raise ValueError(f"devices: expected a count >= 1, received {devices!r}")
    return f"{PREFIX}.{queue}.{device if devices == 1 else f'{device}-x{devices}'}.{priority}"


def worker_queue_names(queues: Sequence[str], device: str, devices: int) -> list[str]:
    """The RQ queues a worker with ``devices`` devices of kind ``device`` pops, in order: the jobs needing the most
    devices first (only such a worker can run them), down to one-device jobs; within each, every logical queue's
    priorities high, default, low.

    >>> worker_queue_names(["default"], "cpu", 2)[:2]
    ['traind.default.cpu-x2.high', 'traind.default.cpu-x2.default']
    """
    if devices < 1:
        raise ValueError(f"devices: expected a count >= 1, received {devices!r}")
    return [rq_queue_name(q, device, p, n) for n in range(devices, 0, -1) for q in queues for p in PRIORITIES]


def parse_rq_queue_name(name: str) -> dict[str, Any] | None:
    """``{"queue", "device", "kind", "devices", "priority"}`` of a traind RQ queue name, or None for another name.
    ``device`` is the name's device segment as written (``gpu-x2``), ``kind`` its device kind (``gpu``).

    >>> parse_rq_queue_name("traind.default.gpu-x2.high")["devices"]
    2
    """
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        return None
    m = re.fullmatch(r"([a-z]+)(?:-x([0-9]+))?", parts[2])
    kind, devices = (m[1], int(m[2] or 1)) if m else (parts[2], 1)
    return {"queue": parts[1], "device": parts[2], "kind": kind, "devices": devices, "priority": parts[3]}


LEMONS_DRAINED = f"{PREFIX}:lemon:drained"  # hash machine (host/device) -> JSON {when, why}: drained machines


def lemon_failures(machine: str) -> str:
    """Sorted set of one machine's recent hung/lost attempts (ms), trimmed to the lemon window."""
    return f"{PREFIX}:lemon:failures:{machine}"


# Fair share between owners (jobs/contract/fair.py). The usage zsets and owner indexes extend IDX_PREFIX exactly as
# below (Lua builds them from that prefix, like the other filter indexes).
IDX_OWNER_COUNTS = f"{IDX_PREFIX}owner_counts"  # hash "<state>\t<owner>" -> jobs (/metrics' per-owner gauges)
FAIR_CLAIMING = f"{PREFIX}:fair:claiming"  # zset "<job_id>-a<attempt>" -> popped (ms): popped, not yet claimed
FAIR_POLICY = f"{PREFIX}:fair:policy"  # string: JSON of the limits the workers last enforced (read by status)


def owner_index(owner: str) -> str:
    """Zset job_id -> created (ms) of one owner's jobs: the list's owner filter."""
    return f"{IDX_PREFIX}owner:{owner}"


def owner_usage(owner: str) -> str:
    """Zset ``<device_ms>:<job_id>:<attempt>`` -> ended (ms): the owner's last ended attempts (fair share)."""
    return f"{IDX_PREFIX}usage:{owner}"


def preempt_claim(job_id: str) -> str:
    """String with a TTL: the running job whose preemption was requested for waiting job ``job_id`` (one victim
    per waiting job, even with several supervisors; void once that job stops running or its flag is gone)."""
    return f"{PREFIX}:preempt:{job_id}"


# Alerts (jobs/alerts): the outbox stream (one entry per alerting event, written with it), one claim per (entry,
# target) while it is sent and once it is done, and each delivery's tries "n:next_at_ms".
ALERTS_OUTBOX = f"{PREFIX}:alerts:outbox"  # stream: job, alert, event (JSON)
ALERTS_TRIES = f"{PREFIX}:alerts:tries"  # hash "<entry id>|<target>" -> "<tries>:<next attempt ms>"


def alert_claim(entry_id: str, target: str) -> str:
    """String with a TTL: the sender holding a delivery (its id) or ``done`` (sent, or given up)."""
    return f"{PREFIX}:alerts:claim:{entry_id}:{target}"
