"""Storage keys: relative POSIX strings confined to the storage root, and the keys traind names objects by.

``jobs/<id>/...`` for a job's files, ``uploads/<sha256>.npz`` for content-addressed uploads. Keys come from specs and
manifests read back from Redis, so every one is checked before any backend sees it.

>>> job_key("abc123", "ckpt", "e000001-b000000-a1.npz")
'jobs/abc123/ckpt/e000001-b000000-a1.npz'
"""

from __future__ import annotations

import re

from jobs.contract.ids import validate_job_id
from jobs.errors import StorageError

DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_KEY_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$")  # no leading '.', no '..' as a part


def validate_key(key: object) -> str:
    """Return ``key`` if it is a relative key whose every part is a plain name, else raise StorageError.

    Keys come from specs and manifests read back from Redis: no absolute keys, no '..', no '.', no empty parts,
    no backslashes or control characters, so a key can never name anything outside the storage root or prefix.

    >>> validate_key("jobs/abc/ckpt/e1.npz")
    'jobs/abc/ckpt/e1.npz'
    """
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise StorageError(f"invalid storage key {key!r}: expected a relative key like 'jobs/<id>/<file>'")
    parts = key.split("/")
    if not all(_KEY_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts):
        raise StorageError(f"invalid storage key {key!r}: expected '/'-separated plain names (no '..', no "
                           "absolute keys, no leading '.')")
    return key


def job_key(job_id: str, *parts: str) -> str:
    """``jobs/<job_id>/<parts...>``, validated."""
    return validate_key("/".join(["jobs", validate_job_id(job_id), *parts]))


def upload_key(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise StorageError(f"invalid upload digest {digest!r}: expected 64 hex characters (sha256)")
    return f"uploads/{digest}.npz"
