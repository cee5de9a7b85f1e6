"""Operations on one existing job that the Python client and the CLI share, so both behave alike: finding a job
by a unique id prefix (as git and docker allow), its status summary, cancelling it.

Imports only redis and traind's small modules: read-only CLI commands use it without loading the client.

>>> # job_id = resolve_job_id(r, "019ac3f1")            # the full id, or AmbiguousJobIdError / JobNotFoundError
>>> # summary(store.get(job_id))["running_epoch"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobs.contract import keys
from jobs.contract.ids import validate_job_id
from jobs.contract.records import spec_monitor, to_int
from jobs.contract.states import JobState
from jobs.errors import AmbiguousJobIdError, JobFinishedError, JobNotFoundError

if TYPE_CHECKING:
    import redis

    from jobs.redis.store import JobStore

MAX_CANDIDATES = 10  # an ambiguity error names at most this many jobs


def resolve_job_id(r: redis.Redis, ref: str) -> str:
    """The full id of the job ``ref`` names: the id itself, or a prefix matching exactly one job.

    Raises InvalidJobIdError for a malformed id, JobNotFoundError when nothing matches, AmbiguousJobIdError (listing up
    to :data:`MAX_CANDIDATES` matches) when several do.
    """
    validate_job_id(ref)  # only [A-Za-z0-9_-]: safe in a key and as a MATCH pattern
    if r.exists(keys.job(ref)):
        return ref
    found: list[str] = []
    # ZSCAN reads the index incrementally (no script, no O(N) reply); ids sort by creation time, not by prefix.
    for member, _ in r.zscan_iter(keys.JOBS_INDEX, match=f"{ref}*", count=1000):
        found.append(member.decode() if isinstance(member, bytes) else str(member))
        if len(found) > MAX_CANDIDATES:
            break
    if not found:
        raise JobNotFoundError(f"job {ref!r} not found (no job id is or starts with it)")
    if len(found) > 1:
        raise AmbiguousJobIdError(ref, sorted(found)[:MAX_CANDIDATES])
    return found[0]


def summary(status: dict[str, Any]) -> dict[str, Any]:
    """A job's status without its spec (the model's whole Keras config can be megabytes): state, epochs, batch
    progress, restarts, best value and its ``monitor``, worker, errors, times; ``history`` when it was read."""
    out = {k: v for k, v in status.items() if k != "spec"}
    out["monitor"] = spec_monitor(status.get("spec"))
    return out


def placement_note(r: redis.Redis, status: dict[str, Any]) -> str | None:
    """Why a queued job may wait longer than usual: it needs N devices of one worker (``resources.gpus: N``) and no
    live worker has that many; None otherwise (also for every job that needs one device).

    >>> # placement_note(r, store.get(job_id))
    >>> # 'waits for a worker with 2 gpu devices (resources.gpus: 2): the 3 live gpu workers have at most 1; ...'
    """
    if status.get("state") != JobState.QUEUED.value:
        return None
    parsed = keys.parse_rq_queue_name(str(status.get("queue") or ""))
    if parsed is None or parsed["devices"] <= 1:
        return None
    need, kind = parsed["devices"], parsed["kind"]
    ids = r.zrange(keys.WORKERS, 0, -1)
    pipe = r.pipeline(transaction=False)
    for wid in ids:
        pipe.hmget(keys.worker(wid.decode(errors="replace")), "device", "devices")
    counts = []
    for res in pipe.execute(raise_on_error=False):
        if isinstance(res, Exception) or res[0] is None:
            continue  # a registry entry whose hash expired (or a key that is no hash): not a live worker
        device, devices = res
        if device.decode(errors="replace").startswith(kind):
            counts.append(to_int(devices or 1, 1))
    if any(n >= need for n in counts):
        return None
    have = f"the {len(counts)} live {kind} workers have at most {max(counts)}" if counts else "none is live"
    start = "traind worker --device gpu:0,1,..." if kind == "gpu" else f"TRAIND_LOGICAL_CPUS={need} traind worker"
    return f"waits for a worker with {need} {kind} devices (resources.gpus: {need}): {have}; start one with `{start}`"


def cancel(store: JobStore, job_id: str) -> JobState:
    """Cancel a job; returns the state it was in. A queued job ends now; a running one is flagged and stops at its
    next batch boundary, keeping its checkpoints; cancelling a cancelled job again is a no-op.

    Raises JobFinishedError for a job that already succeeded or failed, JobNotFoundError for an unknown one.
    """
    prev = store.request_cancel(job_id)
    if prev in (JobState.SUCCEEDED, JobState.FAILED):
        raise JobFinishedError(f"job {job_id} already {prev.value}; nothing to cancel")
    return prev
