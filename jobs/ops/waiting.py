"""Why a queued job is not starting: no live worker serves its queue (:func:`no_worker_note`), and the full
:class:`WaitReason` with its position (:func:`waiting_reason`; issue 24). Said by ``traind status``, ``watch``,
``submit --wait`` and the dashboard after :data:`GRACE_S` seconds in the queue, with how to start one.

Imports only redis-level modules (the read-only CLI commands use it).

>>> # no_worker_note(r, store.get(job_id), store.now_ms())
>>> # 'no live worker serves queue default (cpu) for 12 s: start one with `traind worker --queues default` ...'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from jobs.contract import keys
from jobs.contract.records import to_int

GRACE_S = 5.0  # a worker between two jobs, or starting, is not "missing"
LIVE_S = 20.0  # a worker whose registry heartbeat is older than this is not counted (it renews every second or so)
_WAITING = ("queued", "requeued")


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)  # a planted non-UTF-8 value: one bad row


def no_worker_note(r: Any, status: dict[str, Any], now_ms: int, grace_s: float = GRACE_S) -> str | None:
    """A one-line note when ``status`` is a job waiting for more than ``grace_s`` with no live worker listening on
    its queue (logical queue and device kind); None otherwise."""
    if status.get("state") not in _WAITING:
        return None
    since = status.get("updated_at") or status.get("created_at")
    try:
        waited_s = (now_ms - int(since)) / 1000
    except (TypeError, ValueError):
        return None
    parsed = keys.parse_rq_queue_name(str(status.get("queue") or ""))
    if parsed is None or waited_s < grace_s:
        return None
    queue, kind = parsed["queue"], parsed["kind"]
    ids = r.zrangebyscore(keys.WORKERS, now_ms - LIVE_S * 1000, "+inf")
    pipe = r.pipeline(transaction=False)
    for wid in ids:
        pipe.hmget(keys.worker(_s(wid)), "device", "queues")
    for res in pipe.execute(raise_on_error=False) if ids else []:
        if isinstance(res, Exception) or res[0] is None:
            continue  # its hash expired (gone), or a key that is no hash
        device, queues = res
        if _s(device).startswith(kind) and queue in _s(queues or "default").split(","):
            return None
    how = f"traind worker --queues {queue}" + (" --device gpu:0" if kind == "gpu" else "")
    return (f"no live worker serves queue {queue} ({kind}) for {waited_s:.0f} s: start one with `{how}` "
            "(or run `traind up`, which starts workers)")


_RQ_QUEUE = "rq:queue:"  # rq.Queue.redis_queue_namespace_prefix, without importing rq (slow) in read-only commands
POS_MAX = 10_000  # a job's place in its queue is looked up among at most this many messages (LPOS MAXLEN)
WaitKind = Literal["no_worker", "no_worker_devices", "owner_limit", "behind_higher_priority", "in_queue"]


@dataclass(frozen=True)
class WaitReason:
    """Why a queued job has not started, and where it stands (``traind status``, the API's ``waiting``).

    ``kind`` is the strongest reason: no live worker for its queue, none with the devices it needs, its owner at the
    limit of running jobs, jobs of higher priority ahead, or simply its place in its queue. ``position`` is 1-based
    among its RQ queue's messages (None when it is not among the first :data:`POS_MAX`); with fair share, a job of
    an owner who runs less may still pass it.
    """

    kind: WaitKind
    message: str
    position: int | None = None
    queue_length: int | None = None
    ahead_higher: int = 0
    owner: str | None = None
    owner_running: int | None = None
    owner_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "message", "position", "queue_length", "ahead_higher",
                                               "owner", "owner_running", "owner_limit")}


def waiting_reason(r: Any, status: dict[str, Any], now_ms: int, grace_s: float = GRACE_S) -> WaitReason | None:
    """The :class:`WaitReason` of a queued or requeued job; None for any other state or an unreadable queue name.
    A bounded number of reads: the job's place (LPOS with MAXLEN), three queue lengths, one count, the policy, and
    the registered workers (as :func:`no_worker_note`)."""
    from jobs.contract.fair import read_policy
    from jobs.ops.lookup import placement_note

    if status.get("state") not in _WAITING:
        return None
    qname = str(status.get("queue") or "")
    parsed = keys.parse_rq_queue_name(qname)
    if parsed is None:
        return None
    attempt = status.get("attempt") if isinstance(status.get("attempt"), int) else 1
    rq_id = keys.rq_job_id(str(status.get("id") or ""), attempt)
    higher = keys.PRIORITIES[:keys.PRIORITIES.index(parsed["priority"])] if parsed["priority"] in keys.PRIORITIES \
        else ()
    owner = status.get("owner") if isinstance(status.get("owner"), str) else None
    pipe = r.pipeline(transaction=False)
    pipe.lpos(_RQ_QUEUE + qname, rq_id, maxlen=POS_MAX)
    pipe.llen(_RQ_QUEUE + qname)
    for p in higher:
        pipe.llen(_RQ_QUEUE + keys.rq_queue_name(parsed["queue"], parsed["kind"], p, parsed["devices"]))
    pipe.hget(keys.IDX_OWNER_COUNTS, f"running\t{owner}")
    res = pipe.execute(raise_on_error=False)
    nums = [v if isinstance(v, int) else None for v in res[:-1]]  # a planted wrong-type key reads as unknown
    pos = None if nums[0] is None else nums[0] + 1
    qlen, ahead = nums[1], sum(n or 0 for n in nums[2:])
    running = to_int(res[-1]) if isinstance(res[-1], bytes) else 0
    policy = read_policy(r)
    limits = policy.get("limits") if isinstance(policy.get("limits"), dict) else {}
    limit = limits.get(owner, policy.get("max_running")) if owner is not None else None
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    where = f"position {pos} of {qlen} in {qname}" if pos is not None else f"in {qname} ({qlen} waiting)"
    common = dict(position=pos, queue_length=qlen, ahead_higher=ahead, owner=owner,
                  owner_running=running if owner is not None else None, owner_limit=limit)
    if (note := no_worker_note(r, status, now_ms, grace_s)) is not None:
        return WaitReason("no_worker", note, **common)
    if (note := placement_note(r, status)) is not None:
        return WaitReason("no_worker_devices", note, **common)
    if limit is not None and owner is not None and running >= limit:
        return WaitReason("owner_limit", f"owner limit reached: {owner} runs {running} of {limit} allowed job(s); "
                          f"starts when one of them ends ({where})", **common)
    if ahead:
        return WaitReason("behind_higher_priority", f"behind {ahead} job(s) of higher priority; {where}", **common)
    share = (f"; among jobs of its priority the owner running least goes first ({owner} runs {running})"
             if owner is not None else "")
    return WaitReason("in_queue", f"{where}{share}", **common)


def wait_note(r: Any, status: dict[str, Any], now_ms: int, grace_s: float = GRACE_S) -> WaitReason | None:
    """The :class:`WaitReason` to tell someone watching the job (``traind watch``, ``submit --wait``): only once it
    has waited ``grace_s`` (a worker may be about to take it), None before and for any state but waiting."""
    if status.get("state") not in _WAITING:
        return None
    try:
        waited_s = (now_ms - int(status.get("updated_at") or status.get("created_at"))) / 1000
    except (TypeError, ValueError):
        return None
    return waiting_reason(r, status, now_ms, grace_s) if waited_s >= grace_s else None
