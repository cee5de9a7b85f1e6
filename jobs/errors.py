"""Every exception traind raises on purpose, rooted in :class:`TraindError`."""

from __future__ import annotations

from redis.exceptions import RedisError


class TraindError(Exception):
    """Base class of all traind errors."""


class SpecError(TraindError, ValueError):
    """A job spec was refused; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid job spec ({len(self.problems)} problem(s)):\n{lines}")


class NotAllowedError(SpecError):
    """A `module:function` reference is outside TRAIND_ALLOWED_MODULES."""


class LimitError(SpecError):
    """A spec, upload or history exceeds a configured limit."""


class JobNotFoundError(TraindError, KeyError):
    """No job with this id exists in Redis."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "job not found"


class InvalidJobIdError(TraindError):
    """A job id is malformed (see :mod:`jobs.contract.ids`): it names no job, no key and no path."""


class IllegalTransitionError(TraindError):
    """A job state change that the transition table forbids."""


class FencedError(TraindError):
    """This worker's attempt was superseded (requeued elsewhere); it must stop writing."""


class StorageError(TraindError):
    """A path escapes the storage root, or a file is missing or corrupt."""


class StorageLocationError(StorageError, ValueError):
    """The storage setting is a relative path, an unsupported URL scheme or a URL carrying credentials."""


class StorageUnavailableError(StorageError):
    """The storage cannot be used (bucket missing, access denied, unreachable past the retries)."""


class CheckpointError(StorageError):
    """A checkpoint failed its checksum or manifest check."""


class MessageError(TraindError):
    """A queue message read from Redis is malformed."""


class UserCodeError(TraindError):
    """The job's own code (builder, loader, training) raised; the job fails without retry."""


class JobTimeoutError(TraindError, TimeoutError):
    """Waiting for a job to finish took longer than the given timeout."""


class RedisUnavailableError(TraindError):
    """Redis could not be reached (after retries)."""


class ConfigError(TraindError):
    """A setting or command-line option is invalid or a required tool is missing."""


class DurabilityError(TraindError, RedisError):
    """A write was not confirmed by enough Redis replicas (TRAIND_REDIS_MIN_REPLICAS) in time, or landed on a
    primary the sentinels had already replaced: it may be lost in a failover. A RedisError, so processes treat it
    like Redis being unavailable (a worker abandons the attempt to its lease instead of failing the job)."""


class StalePrimaryError(DurabilityError):
    """A write landed on a Redis node that the sentinels no longer report as the primary: it will be discarded."""


class AmbiguousJobIdError(TraindError):
    """A job id prefix matches more than one job; ``candidates`` lists (some of) them."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        self.prefix = prefix
        self.candidates = list(candidates)
        super().__init__(f"job id prefix {prefix!r} is ambiguous; it matches {', '.join(self.candidates)}"
                         " - type more characters")


class JobFinishedError(TraindError):
    """The job already succeeded or failed, so there is nothing to cancel."""


class ApiError(TraindError):
    """The traind API (``traind serve``) could not be reached, or answered with an error of its own (5xx, 429, a
    malformed or oversized answer)."""


class ApiAuthError(ApiError):
    """The traind API refused the token (401: missing or wrong; 403: the token may not do this)."""
