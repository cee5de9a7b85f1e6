"""Job ids, in one place: how they are made, what a valid one is, and how a delivery's RQ message id packs one.

A job id is 1-64 characters of ``[A-Za-z0-9_-]`` starting with a letter or digit: safe as a storage path part, in a
Redis key and as a ``MATCH`` pattern. New ids are time-ordered (11 hex digits of milliseconds) and unguessable
(40 random bits). One delivery of a job to a worker is the RQ message ``<job_id>-a<attempt>``.

>>> validate_job_id("019ac3f1b2a4c5d6e7f8a9")
'019ac3f1b2a4c5d6e7f8a9'
>>> rq_job_id("019ac3f1b2", 3)
'019ac3f1b2-a3'
>>> parse_rq_job_id("019ac3f1b2-a3")
('019ac3f1b2', 3)
"""

from __future__ import annotations

import re
import secrets
import time

from jobs.errors import InvalidJobIdError

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_ATTEMPT_DIGITS = 7  # attempts go up to 1,000,000 (queue.Message); a longer number is not an attempt


def new_job_id() -> str:
    """Time-ordered, unguessable, path-safe id."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None  # fullmatch: '$' allows a trailing \n


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a safe id (no '/', '..', control chars), else raise InvalidJobIdError."""
    if not is_job_id(job_id):
        raise InvalidJobIdError(
            f"invalid job id {job_id!r}: expected 1-64 characters of [A-Za-z0-9_-], starting with a letter or digit"
        )
    return job_id  # type: ignore[return-value]  # is_job_id checked it is a str


def rq_job_id(job_id: str, attempt: int) -> str:
    """The RQ message id of one delivery attempt."""
    return f"{job_id}-a{attempt}"


def parse_rq_job_id(rq_id: str) -> tuple[str | None, int | None]:
    """``(job id, attempt)`` packed in an RQ message id by :func:`rq_job_id`; each part None when it is not valid
    (a planted or garbled message still names what it can, so that its job can be failed).

    >>> parse_rq_job_id("../x-a1"), parse_rq_job_id("abc-a1x"), parse_rq_job_id("abc")
    ((None, 1), ('abc', None), ('abc', None))
    """
    base, sep, tail = rq_id.rpartition("-a")
    if not sep:
        base, tail = rq_id, ""
    attempt = int(tail) if tail.isascii() and tail.isdigit() and len(tail) <= _ATTEMPT_DIGITS else None
    return (base if is_job_id(base) else None), attempt
