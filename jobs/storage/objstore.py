"""Object-store backend of :class:`jobs.storage.base.Storage` (fsspec: s3fs for ``s3://``; gcsfs / adlfs where
installed).

Guarantees on object storage:
- an object is written by one PUT (or one multipart upload, aborted on any error), so a reader sees the old object,
  none, or the complete new one; the writer hashes while writing and Redis records that sha256, which every read
  checks; a checkpoint is visible to resume only once its manifest is committed to Redis;
- multipart uploads left by a killed writer are aborted by the next attempt (:meth:`ObjectStorage.cleanup_incomplete`);
- transient errors (connection refused or reset, timeouts, 5xx, throttling) are retried with exponential backoff
  for ``retry_s`` seconds; a bucket that does not exist or an access denied is :class:`StorageUnavailableError`,
  one line naming the URL.

Credentials and endpoint come only from the standard environment and config files of the backend (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``~/.aws/config``...);
a location carrying ``user:password@`` is refused, so a secret never lands in a setting, a log or Redis.

>>> # ObjectStorage("s3://ml-checkpoints/traind").put_bytes("jobs/j1/x", b"...")
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from jobs.errors import StorageError, StorageLocationError, StorageUnavailableError, TraindError
from jobs.storage.base import Storage, sha256_file
from jobs.storage.limits import READ_CHUNK, check_size, read_capped
from jobs.storage.location import SCHEMES, parse_location
from jobs.storage.names import validate_key
from jobs.storage.streams import HashingWriter, PipelinedHashingWriter, finishing

log = logging.getLogger("traind.storage")
T = TypeVar("T")

SPOOL_BYTES = 64 * 2**20  # objects up to this size are uploaded from memory, larger ones from a local temp file


# S3 error codes (botocore ClientError's Error.Code) that no retry can fix. HEAD requests have no body, so their
# errors carry the HTTP status as the code.
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
PERMANENT_CODES = MISSING_BUCKET_CODES | {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden",
                                          "403", "AllAccessDisabled", "AccountProblem", "InvalidBucketName"}


def error_code(e: BaseException) -> str | None:
    """The S3 error code behind ``e``: botocore's ClientError carries it, and s3fs raises FileNotFoundError,
    PermissionError or OSError with the ClientError as the cause. None for errors without one (network trouble).
    Decisions are taken from the code, never from the message (which quotes the bucket and key names)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            if code:
                return str(code)
        cur = cur.__cause__ or cur.__context__
    return None


def _transient(e: BaseException) -> bool:
    """Errors worth retrying: network trouble, timeouts, 5xx, throttling. Not: missing objects, access denied."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, StorageError,
                      ValueError, TypeError, KeyError, AttributeError, NotImplementedError)):
        return False
    return error_code(e) not in PERMANENT_CODES  # OSError, timeouts, aiohttp errors, 5xx ClientErrors, SlowDown ...


class ObjectStorage(Storage):
    """``s3://bucket/prefix`` (or gs://, az://) through fsspec. Thread-safe; one filesystem object per process."""

    def __init__(self, location: str | os.PathLike[str] | None = None, *, retry_s: float = 60.0,
                 fs: Any = None, **_: Any) -> None:
        kind, url = parse_location(location)
        if kind != "object":
            raise StorageLocationError(f"ObjectStorage needs a URL, received {location!r}")
        self.url = url
        scheme, rest = url.split("://", 1)
        self.protocol = SCHEMES[scheme]
        self.bucket = rest.split("/", 1)[0]
        self.root = rest  # "bucket/prefix": fsspec paths have no scheme
        self.retry_s = retry_s
        self._fs, self._fs_pid = fs, os.getpid() if fs is not None else -1
        self.retries = 0  # transient errors retried so far (tests and benchmarks read it)

    @property
    def fs(self) -> Any:
        if self._fs is None or self._fs_pid != os.getpid():  # never share an event loop with a forked parent
            import fsspec

            # No instance or listing caches: another machine changes the bucket behind this process' back.
            # s3fs' own retry loop is turned down to one try: botocore's retries (AWS_RETRY_MODE / AWS_MAX_ATTEMPTS
            # from the user's environment) run inside traind's, which holds the overall budget (retry_s).
            fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, use_listings_cache=False)
            if self.protocol == "s3":
                fs.retries = 1
            self._fs = fs
            self._fs_pid = os.getpid()
        return self._fs

    def _p(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; retry transient errors with exponential backoff for ``retry_s`` seconds."""
        deadline = time.monotonic() + self.retry_s
        delay, tries = 0.2, 0
        while True:
            tries += 1
            try:
                return fn()
            except FileNotFoundError as e:
                if error_code(e) in MISSING_BUCKET_CODES:
                    raise StorageUnavailableError(f"storage {self.url}: bucket {self.bucket!r} does not exist "
                                                  f"(while trying to {what})") from None
                raise  # a missing object: the caller knows what that means
            except PermissionError as e:
                raise StorageUnavailableError(f"storage {self.url}: access denied while trying to {what} ({e})"
                                              ) from None
            except TraindError:
                raise  # already one line naming the location (or a LimitError: the object is too large)
            except Exception as e:  # classified below
                if error_code(e) in MISSING_BUCKET_CODES:
                    raise StorageUnavailableError(f"storage {self.url}: bucket {self.bucket!r} does not exist "
                                                  f"(while trying to {what})") from None
                if not _transient(e):
                    raise StorageUnavailableError(f"storage {self.url}: could not {what}: {type(e).__name__}: {e}"
                                                  ) from None
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailableError(
                        f"storage {self.url}: could not {what} after {tries} tries over {self.retry_s:g} s: "
                        f"{type(e).__name__}: {e}") from None
                self.retries += 1
                log.warning("storage %s: %s failed (%s: %s); retrying in %.1f s", self.url, what,
                            type(e).__name__, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- primitives ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer(self, key: str, pipelined: bool = False) -> Iterator[HashingWriter]:
        # Spool locally (memory, then a temp file past SPOOL_BYTES) while hashing, then upload the whole object in
        # one retried PUT / multipart upload: a retry needs the bytes again, and a stream cannot be replayed.
        spool = _Spool()
        try:
            with finishing(PipelinedHashingWriter(spool, copy=False) if pipelined else HashingWriter(spool)) as w:
                yield w
            self._upload(key, spool)
        finally:
            spool.close()

    def _upload(self, key: str, spool: _Spool) -> None:
        path = self._p(key)
        if spool.file is None:
            data = spool.buf.getvalue()
            self._retry(f"write {key}", lambda: self.fs.pipe_file(path, data))
        else:
            spool.file.flush()
            local = spool.file.name
            self._retry(f"write {key}", lambda: self.fs.put_file(local, path))

    def put_bytes(self, key: str, data: bytes) -> str:
        # The bytes are in memory already: PUT them as they are (no copy into a spool), hashing them meanwhile in a
        # second thread (hashlib releases the GIL), so the sha256 costs the upload no time.
        path = self._p(key)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
            digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
            self._retry(f"write {key}", lambda: self.fs.pipe_file(path, data))
            return digest.result()

    def put_local_file(self, key: str, path: Path) -> str:
        digest = sha256_file(path)
        self._retry(f"write {key}", lambda: self.fs.put_file(str(path), self._p(key)))
        return digest

    def read_bytes(self, key: str, max_bytes: int | None = None, what: str | None = None) -> bytes:
        path = self._p(key)
        if max_bytes is None:
            return self._retry(f"read {key}", lambda: bytes(self.fs.cat_file(path)))
        limit = max_bytes

        def bounded() -> bytes:
            # Opening reads the object's size (HEAD); the body is then fetched one ranged GET per chunk, without
            # read-ahead (cache_type "none"), so no more than limit + 1 bytes are ever transferred.
            with self.fs.open(path, "rb", block_size=READ_CHUNK, cache_type="none") as f:
                check_size(f.size, limit, what or key)
                return read_capped(f, limit, what or key, READ_CHUNK)

        return self._retry(f"read {key}", bounded)

    def exists(self, key: str) -> bool:
        try:
            self._retry(f"look up {key}", lambda: self.fs.info(self._p(key)))
            return True
        except FileNotFoundError:
            return False

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._retry(f"delete {key}", lambda: self.fs.rm_file(self._p(key)))

    def delete_prefix(self, prefix: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._retry(f"delete {prefix}/", lambda: self.fs.rm(self._p(prefix), recursive=True))

    def cleanup_incomplete(self, prefix: str) -> int:
        """Abort the multipart uploads a killed writer left under ``prefix`` (S3 keeps their parts, and bills them,
        until aborted; a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` is the belt to these braces)."""
        if self.protocol != "s3":
            return 0  # gcsfs' resumable uploads and Azure's uncommitted blocks expire by themselves
        key_prefix = self._p(prefix).split("/", 1)[1] + "/"
        out = self._retry("list unfinished uploads", lambda: self.fs.call_s3(
            "list_multipart_uploads", Bucket=self.bucket, Prefix=key_prefix))
        n = 0
        for up in out.get("Uploads", []):
            with contextlib.suppress(Exception):
                self._retry("abort an unfinished upload", lambda u=up: self.fs.call_s3(
                    "abort_multipart_upload", Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]))
                n += 1
        return n

    def list_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (relative to the root), for tests and tools."""
        base = self.root + "/"
        try:
            found = self._retry(f"list {prefix}", lambda: self.fs.find(self._p(prefix)))
        except FileNotFoundError:
            return []
        return sorted(f[len(base):] for f in found if f.startswith(base))

    def check(self) -> None:
        """The bucket exists and this process may use it; else StorageUnavailableError naming the URL."""
        if self.protocol == "s3":
            def head() -> Any:
                try:
                    return self.fs.call_s3("head_bucket", Bucket=self.bucket)
                except FileNotFoundError:
                    raise StorageUnavailableError(f"storage {self.url}: bucket {self.bucket!r} does not exist"
                                                  ) from None

            self._retry("reach the bucket", head)
        else:
            try:
                self._retry("reach the bucket", lambda: self.fs.info(self.bucket))
            except FileNotFoundError:
                raise StorageUnavailableError(f"storage {self.url}: bucket {self.bucket!r} does not exist") from None


class _Spool(io.RawIOBase):
    """Bytes in memory up to SPOOL_BYTES, then in a named local temp file (put_file uploads it in parts)."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = io.BytesIO()
        self.file: Any = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.file is None and self.buf.tell() + len(data) > SPOOL_BYTES:
            self.file = tempfile.NamedTemporaryFile(prefix="traind-spool-", suffix=".tmp")
            self.file.write(self.buf.getbuffer())
            self.buf = io.BytesIO()
        target = self.file if self.file is not None else self.buf
        return int(target.write(data))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()
