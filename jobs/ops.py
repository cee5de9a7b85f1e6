"""Operations on one existing job that the Python client and the CLI share, so both behave alike: finding a job
by a unique id prefix (as git and docker allow), its status summary, cancelling it.

Imports only redis and traind's small modules: read-only CLI commands use it without loading the client.

>>> # job_id = resolve_job_id(r, "019ac3f1")            # the full id, or AmbiguousJobIdError / JobNotFoundError
>>> # summary(store.get(job_id))["running_epoch"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobs import keys
from jobs.errors import AmbiguousJobIdError, JobFinishedError, JobNotFoundError
from jobs.states import JobState
from jobs.storage import validate_job_id

if TYPE_CHECKING:
    import redis

    from jobs.store import JobStore

MAX_CANDIDATES = 10  # an ambiguity error names at most this many jobs


def resolve_job_id(r: redis.Redis, ref: str) -> str:
    """The full id of the job ``ref`` names: the id itself, or a prefix matching exactly one job.

    Raises StorageError for a malformed id, JobNotFoundError when nothing matches, AmbiguousJobIdError (listing up
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
    spec = status.get("spec")
    monitor = None
    if isinstance(spec, dict) and isinstance(spec.get("checkpoint"), dict):
        monitor = spec["checkpoint"].get("monitor")
    out["monitor"] = monitor or "val_loss"
    return out


def cancel(store: JobStore, job_id: str) -> JobState:
    """Cancel a job; returns the state it was in. A queued job ends now; a running one is flagged and stops at its
    next batch boundary, keeping its checkpoints; cancelling a cancelled job again is a no-op.

    Raises JobFinishedError for a job that already succeeded or failed, JobNotFoundError for an unknown one.
    """
    prev = store.request_cancel(job_id)
    if prev in (JobState.SUCCEEDED, JobState.FAILED):
        raise JobFinishedError(f"job {job_id} already {prev.value}; nothing to cancel")
    return prev
