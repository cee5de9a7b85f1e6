"""Checkpoint and upload storage: one key-based API over a local directory or an object store.

Keys are relative POSIX strings (``jobs/<id>/ckpt/e000001-b000000-a1.npz``, ``uploads/<sha256>.npz``, see
:mod:`jobs.storage.names`) confined to the configured root; callers never build paths themselves.
:func:`jobs.storage.factory.open_storage` returns the backend for a location:
:class:`jobs.storage.local.LocalStorage` for an absolute path (atomic temp + fsync + ``os.replace``), or
:class:`jobs.storage.objstore.ObjectStorage` for ``s3://bucket/prefix`` (and ``gs://`` / ``az://`` where fsspec has
them). :class:`Storage` is their base type: the primitives are the backends', uploads and verification are shared.

Visibility: an object is never trusted on its own. A checkpoint becomes visible to resume only when its manifest
is committed to Redis (see :mod:`worker.checkpoint`), and every read is verified against the sha256 recorded there.

>>> import tempfile
>>> from jobs.storage.factory import open_storage
>>> st = open_storage(tempfile.mkdtemp())
>>> digest = st.put_bytes("jobs/abc123/note.txt", b"hi")
>>> st.read_verified("jobs/abc123/note.txt", digest)
b'hi'
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from jobs.errors import CheckpointError, LimitError, StorageError
from jobs.storage.limits import check_size

# Re-exported: the key helpers lived here before jobs.storage.names, and callers import them from here still.
from jobs.storage.names import DIGEST_RE as DIGEST_RE
from jobs.storage.names import job_key as job_key
from jobs.storage.names import upload_key, validate_key
from jobs.storage.streams import HashingWriter

if TYPE_CHECKING:
    import numpy as np  # imported where arrays are handled: job-id checks and paths must not load numpy


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class UploadCacheLike(Protocol):
    def get(self, digest: str) -> bytes | None: ...

    def put(self, digest: str, data: bytes) -> None: ...


class Storage(abc.ABC):
    """Base type of the storage backends (:func:`jobs.storage.factory.open_storage` picks one).

    Subclasses implement the primitive operations (``_writer``, ``put_local_file``, ``read_bytes``, ``exists``,
    ``delete``, ``delete_prefix``, ``cleanup_incomplete``, ``check``); uploads, verification and the model helpers
    are shared.
    """

    url: str  # where it is, for messages (credentials never appear: they are not part of the location)
    is_local: bool = False
    cache: UploadCacheLike | None = None

    # -- primitives (backends) -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _writer(self, key: str, pipelined: bool = False) -> contextlib.AbstractContextManager[HashingWriter]: ...

    @abc.abstractmethod
    def put_local_file(self, key: str, path: Path) -> str:
        """Publish a local file under ``key`` (atomically: all or nothing); return its sha256."""

    @abc.abstractmethod
    def read_bytes(self, key: str, max_bytes: int | None = None, what: str | None = None) -> bytes:
        """The object's bytes; FileNotFoundError when there is none.

        ``max_bytes``: LimitError (naming ``what``, default the key) for a larger object, decided from its size
        before its body is read, and no more than ``max_bytes + 1`` bytes are ever read (see
        :mod:`jobs.storage.limits`).
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    @abc.abstractmethod
    def cleanup_incomplete(self, prefix: str) -> int:
        """Remove what interrupted writes under ``prefix`` left (temp files, unfinished multipart uploads)."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (a purged job's directory)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StorageError (one line naming the location) unless the storage can be reached and written."""

    def ensure(self) -> Storage:
        return self

    # -- shared --------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_write(self, key: str, pipelined: bool = False) -> Iterator[HashingWriter]:
        """Stream an object to ``key``; it appears complete when the block exits cleanly, never torn.

        On an exception nothing is published (a local temp file is removed; a multipart upload is aborted).
        ``pipelined``: hash and write on threads of their own (:class:`jobs.storage.streams.PipelinedHashingWriter`,
        no copy
        of the chunks), for large objects such as checkpoints; the buffers written must not change until the block
        exits.

        >>> # with storage.open_write("jobs/j1/ckpt/x.npz") as w: np.savez(w, **arrays)
        >>> # w.sha256, w.size
        """
        with self._writer(validate_key(key), pipelined) as w:
            yield w

    def put_bytes(self, key: str, data: bytes) -> str:
        with self.open_write(key) as w:
            w.write(data)
        return w.sha256

    def put_with(self, key: str, writer: Callable[[Path], None], suffix: str = ".tmp") -> str:
        """Publish the file that ``writer(local_path)`` writes (Keras' save APIs want a path); return its sha256.

        ``suffix`` lets writers that insist on an extension (Keras: .keras, .weights.h5) write the temp file.
        """
        with tempfile.TemporaryDirectory(prefix="traind-put-") as d:
            tmp = Path(d) / f"object{suffix}"
            writer(tmp)
            return self.put_local_file(validate_key(key), tmp)

    def read_verified(self, key: str, sha256: str, what: str | None = None, max_bytes: int | None = None) -> bytes:
        """The object's bytes after checking them against ``sha256``; CheckpointError when missing or different,
        LimitError when larger than ``max_bytes`` (refused before it is read, see :meth:`read_bytes`)."""
        what = what or key
        try:
            data = self.read_bytes(validate_key(key), max_bytes, what)
        except FileNotFoundError:
            raise CheckpointError(f"{what} is missing from {self.url}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CheckpointError(f"{what} failed its sha256 check (torn or corrupt)")
        return data

    @contextlib.contextmanager
    def local_file(self, key: str, sha256: str, suffix: str = "", what: str | None = None) -> Iterator[Path]:
        """A local file with the object's verified content, for APIs that want a path (``keras.saving.load_model``)."""
        data = self.read_verified(key, sha256, what)
        with tempfile.TemporaryDirectory(prefix="traind-get-") as d:
            p = Path(d) / f"object{suffix}"
            p.write_bytes(data)
            yield p

    # -- uploads (content-addressed arrays) ----------------------------------------------------------------------
    def put_arrays(self, arrays: Mapping[str, np.ndarray], max_bytes: int | None = None) -> str:
        """Store arrays as a content-addressed .npz; return the sha256 that names it."""
        import numpy as np

        # Refuse object arrays before np.savez: it would pickle them (and workers load with allow_pickle=False).
        for k, v in arrays.items():
            if np.asarray(v).dtype == object:
                raise StorageError(f"upload: array {k!r} has dtype object; only numeric/bool/str arrays are accepted")
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        data = buf.getvalue()
        if max_bytes is not None and len(data) > max_bytes:
            raise LimitError([f"upload: {len(data)} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
        return self.put_content_addressed(data, upload_key)

    def put_content_addressed(self, data: bytes, key_of: Callable[[str], str]) -> str:
        """Store ``data`` under ``key_of(<its sha256>)`` and return the sha256; an existing object with that name is
        kept (content-addressed: it has this content), so uploading the same content twice writes once."""
        digest = hashlib.sha256(data).hexdigest()
        key = key_of(digest)
        if not self.exists(key):
            self.put_bytes(key, data)
        return digest

    def get_arrays(self, digest: str, max_bytes: int | None = None) -> dict[str, np.ndarray]:
        """Load an uploaded .npz (``allow_pickle=False``), verifying its sha256 and size.

        With a :attr:`cache` (workers on object storage), a verified local copy is used when there is one.
        """
        key = upload_key(digest)
        data = self.cache.get(digest) if self.cache is not None else None
        if data is None:
            data = self._fetch_upload(key, digest, max_bytes)
            if self.cache is not None:
                self.cache.put(digest, data)
        if max_bytes is not None:
            check_size(len(data), max_bytes, f"upload {digest}")  # a cached copy too
        return _load_npz(data, digest, max_bytes)

    def _fetch_upload(self, key: str, digest: str, max_bytes: int | None) -> bytes:
        try:
            data = self.read_bytes(key, max_bytes, f"upload {digest}")  # an oversized object is never downloaded
        except FileNotFoundError:
            raise StorageError(f"upload {digest} not found under {self.url.rstrip('/')}/uploads") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise StorageError(f"upload {digest} is corrupt: its sha256 does not match its name")
        return data


def _load_npz(data: bytes, digest: str, max_bytes: int | None) -> dict[str, np.ndarray]:
    import numpy as np

    try:
        if max_bytes is not None:
            # A small zip can inflate to a huge array: check uncompressed sizes before reading.
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                total = sum(i.file_size for i in zf.infolist())
            if total > max_bytes:
                raise LimitError([f"upload {digest}: {total} bytes uncompressed exceeds "
                                  f"TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except LimitError:
        raise  # a LimitError is a ValueError too: keep it from being reported as a corrupt upload
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise StorageError(f"upload {digest} could not be loaded safely: {e}") from e
