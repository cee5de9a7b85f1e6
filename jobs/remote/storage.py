"""The storage a remote client sees: :class:`ApiStorage`, the :class:`~jobs.storage.base.Storage` type over
``traind serve`` (:mod:`daemon.serve.remote_api`).

``fit`` packs data and models with the same code as a local client (:mod:`jobs.keras.fitdata`, ``datasets``,
``modelio``); only where the bytes go differs: :meth:`ApiStorage.put_content_addressed` uploads them (a presigned
PUT URL when the server's storage is an object store and the laptop can reach it, else through the API, which
checks size and sha256). ``load_model`` reads a job's files the same way, and :meth:`Storage.read_verified` checks
them against the sha256 Redis recorded. Nothing here needs Redis or object-store credentials.

Writing keys, listing and deleting are the server's business: those primitives raise StorageError saying so.

>>> # st = ApiStorage(transport); digest = st.put_arrays({"x": x})   # uploaded; a worker reads uploads/<digest>.npz
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import NoReturn

from jobs.errors import ApiError, JobNotFoundError, StorageError
from jobs.remote.transport import Transport
from jobs.storage.base import Storage
from jobs.storage.names import upload_key
from jobs.storage.streams import HashingWriter

log = logging.getLogger("traind.remote")
CACHE_MAX_BYTES = 512 * 1024**2


class _MemoryCache:
    """Uploads of this process by digest (bounded, oldest dropped): ``fit`` rebuilds the model it is about to submit
    from its own upload, which then needs no download."""

    def __init__(self, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, digest: str) -> bytes | None:
        return self._items.get(digest)

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.max_bytes or digest in self._items:
            return
        self._items[digest] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            self.size -= len(self._items.popitem(last=False)[1])


class ApiStorage(Storage):
    """Uploads and a job's files through the traind API (``job_id``: whose files :meth:`read_bytes` reads)."""

    is_local = False

    def __init__(self, transport: Transport, job_id: str | None = None, max_bytes: int | None = None) -> None:
        self.transport, self.job_id, self.max_bytes = transport, job_id, max_bytes
        self.url = f"{transport.target.url} (traind API)"
        self.cache = _MemoryCache()
        self.uploaded: list[tuple[str, str]] = []  # (key, "presigned" | "api" | "exists"): what went where

    def for_job(self, job_id: str) -> ApiStorage:
        """A view reading ``job_id``'s files (sharing this one's cache and connection)."""
        other = ApiStorage(self.transport, job_id, self.max_bytes)
        other.cache = self.cache
        return other

    # -- uploads ----------------------------------------------------------------------------------------------------
    def put_content_addressed(self, data: bytes, key_of: Callable[[str], str]) -> str:
        digest = hashlib.sha256(data).hexdigest()
        key = key_of(digest)
        if key == upload_key(digest):
            kind = "npz"
        elif key == f"uploads/ds-{digest}.tar":
            kind = "dataset"
        else:
            raise StorageError(f"{key}: only content-addressed uploads go through the traind API")
        plan = self.transport.json("POST", "/api/v1/uploads", body={"kind": kind, "sha256": digest,
                                                                    "size": len(data)}, idempotent=True)
        if plan.get("exists"):
            how = "exists"
        elif plan.get("put_url") and self._put_presigned(plan["put_url"], data, kind, digest):
            how = "presigned"
        else:
            self.transport.call("PUT", str(plan["path"]), content=data,
                                headers={"Content-Type": "application/octet-stream"}, idempotent=True)
            how = "api"
        self.uploaded.append((key, how))
        if kind == "npz":
            self.cache.put(digest, data)
        return digest

    def _put_presigned(self, url: str, data: bytes, kind: str, digest: str) -> bool:
        """PUT to the object store directly, then have the server check size and sha256; False (the caller goes
        through the API) when the object store cannot be reached from here."""
        try:
            self.transport.call("PUT", url, content=data, absolute=True, idempotent=True)
        except ApiError as e:
            log.info("presigned upload failed (%s); uploading through the API instead", e)
            return False
        self.transport.json("POST", f"/api/v1/uploads/{kind}/{digest}/verify", idempotent=True)
        return True

    # -- a job's files ----------------------------------------------------------------------------------------------
    def read_bytes(self, key: str, max_bytes: int | None = None, what: str | None = None) -> bytes:
        if self.job_id is None:
            raise StorageError(f"{what or key}: reading files through the API needs a job (ApiStorage.for_job)")
        bound = max_bytes or self.max_bytes or 64 * 1024**3
        params = {"key": key}
        try:
            url = self.transport.json("GET", f"/api/v1/jobs/{self.job_id}/file-url", params=params).get("url")
            if url:
                try:
                    return self.transport.call("GET", url, absolute=True, max_bytes=bound)
                except ApiError as e:  # the object store is not reachable from here: through the API then
                    log.info("presigned download failed (%s); downloading through the API instead", e)
            return self.transport.call("GET", f"/api/v1/jobs/{self.job_id}/file", params=params, max_bytes=bound)
        except JobNotFoundError as e:
            raise FileNotFoundError(str(e)) from None

    def job_dir(self, job_id: str) -> PurePosixPath:
        """Where the job's files are, relative to the server's storage (TensorBoard logs are under it)."""
        return PurePosixPath("jobs") / job_id

    # -- the server's business --------------------------------------------------------------------------------------
    def _refuse(self, what: str) -> NoReturn:
        raise StorageError(f"{what}: not available through the traind API ({self.transport.target.url}); only "
                           "content-addressed uploads and a job's own files are")

    @contextlib.contextmanager
    def _writer(self, key: str, pipelined: bool = False) -> Iterator[HashingWriter]:
        self._refuse(f"write {key}")
        yield  # type: ignore[misc]  # unreachable: a generator for contextmanager

    def put_local_file(self, key: str, path: Path) -> str:
        self._refuse(f"write {key}")

    def exists(self, key: str) -> bool:
        self._refuse(f"look up {key}")

    def delete(self, key: str) -> None:
        self._refuse(f"delete {key}")

    def cleanup_incomplete(self, prefix: str) -> int:
        self._refuse(f"clean up {prefix}")

    def delete_prefix(self, prefix: str) -> None:
        self._refuse(f"delete {prefix}")

    def check(self) -> None:
        self.transport.json("GET", "/api/v1/client/config")
