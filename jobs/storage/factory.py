"""The storage backend for a location: :func:`open_storage`.

Its own module so that the backends import their base type and nothing imports back (the base class used to pick
its subclass in ``Storage.__new__``, which made base and backends import each other).

>>> import tempfile
>>> open_storage(tempfile.mkdtemp()).is_local
True
>>> # open_storage("s3://ml-checkpoints/traind", retry_s=60).put_bytes("jobs/j1/x", b"...")
"""

from __future__ import annotations

import os

from jobs.storage.base import Storage
from jobs.storage.local import LocalStorage
from jobs.storage.location import parse_location


def open_storage(location: str | os.PathLike[str] | None = None, *, retry_s: float = 60.0) -> Storage:
    """:class:`~jobs.storage.local.LocalStorage` for an absolute path (None: the default location),
    :class:`~jobs.storage.objstore.ObjectStorage` for an object-store URL; StorageLocationError (one line) for
    anything else. ``retry_s``: how long an object store's transient errors are retried."""
    kind, _ = parse_location(location)
    if kind == "local":
        return LocalStorage(location)
    from jobs.storage.objstore import ObjectStorage  # fsspec/s3fs only where a URL is used

    return ObjectStorage(location, retry_s=retry_s)
