"""Checkpoint and upload storage: one key-based API over a local directory or an object store.

Keys are relative POSIX strings (``jobs/<id>/ckpt/e000001-b000000-a1.npz``, ``uploads/<sha256>.npz``) confined to
the configured root; callers never build paths themselves. ``Storage(location)`` returns the backend for the
location: :class:`LocalStorage` for an absolute path (atomic temp + fsync + ``os.replace``), or
:class:`jobs.storage.objstore.ObjectStorage`
for ``s3://bucket/prefix`` (and ``gs://`` / ``az://`` where fsspec has them).

Visibility: an object is never trusted on its own. A checkpoint becomes visible to resume only when its manifest
is committed to Redis (see :mod:`worker.checkpoint`), and every read is verified against the sha256 recorded there.

>>> import tempfile
>>> st = Storage(tempfile.mkdtemp())
>>> digest = st.put_bytes("jobs/abc123/note.txt", b"hi")
>>> st.read_verified("jobs/abc123/note.txt", digest)
b'hi'
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from jobs.contract.ids import validate_job_id
from jobs.errors import CheckpointError, LimitError, StorageError
from jobs.storage.streams import CacheDroppingFile, HashingWriter, PipelinedHashingWriter, finishing

if TYPE_CHECKING:
    import numpy as np  # imported where arrays are handled: job-id checks and paths must not load numpy

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


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a power loss."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse directory fsync; the file itself is already synced
    finally:
        os.close(fd)


class UploadCacheLike(Protocol):
    def get(self, digest: str) -> bytes | None: ...

    def put(self, digest: str, data: bytes) -> None: ...


class Storage:
    """Base of the storage backends; ``Storage(location)`` picks one (see the module docstring).

    Subclasses implement the primitive operations (``_writer``, ``put_local_file``, ``read_bytes``, ``exists``,
    ``delete``, ``cleanup_incomplete``, ``check``); uploads, verification and the model helpers are shared.
    """

    url: str  # where it is, for messages (credentials never appear: they are not part of the location)
    is_local: bool = False
    cache: UploadCacheLike | None = None

    def __new__(cls, location: str | os.PathLike[str] | None = None, **kwargs: Any) -> Storage:
        if cls is Storage:
            from jobs.storage.location import parse_location
            from jobs.storage.objstore import ObjectStorage

            kind, norm = parse_location(location)
            target: type[Storage] = LocalStorage if kind == "local" else ObjectStorage
            return super().__new__(target)
        return super().__new__(cls)

    # -- primitives (backends) -----------------------------------------------------------------------------------
    def _writer(self, key: str, pipelined: bool = False) -> contextlib.AbstractContextManager[HashingWriter]:
        raise NotImplementedError

    def put_local_file(self, key: str, path: Path) -> str:
        """Publish a local file under ``key`` (atomically: all or nothing); return its sha256."""
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the object if it exists."""
        raise NotImplementedError

    def cleanup_incomplete(self, prefix: str) -> int:
        """Remove what interrupted writes under ``prefix`` left (temp files, unfinished multipart uploads)."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (a purged job's directory)."""
        raise NotImplementedError

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

    def read_verified(self, key: str, sha256: str, what: str | None = None) -> bytes:
        """The object's bytes after checking them against ``sha256``; CheckpointError when missing or different."""
        what = what or key
        try:
            data = self.read_bytes(validate_key(key))
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
        if max_bytes is not None and len(data) > max_bytes:
            raise LimitError([f"upload {digest}: {len(data)} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
        return _load_npz(data, digest, max_bytes)

    def _fetch_upload(self, key: str, digest: str, max_bytes: int | None) -> bytes:
        try:
            data = self.read_bytes(key)
        except FileNotFoundError:
            raise StorageError(f"upload {digest} not found under {self.url.rstrip('/')}/uploads") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise LimitError([f"upload {digest}: {len(data)} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
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


class LocalStorage(Storage):
    """A local directory (or an NFS mount shared by all workers): temp file + fsync + ``os.replace``."""

    is_local = True

    def __init__(self, root: str | os.PathLike[str] | None = None, **_: Any) -> None:
        from jobs.storage.location import parse_location

        _, norm = parse_location(root)
        self.root = Path(norm).resolve()
        self.url = str(self.root)

    def ensure(self) -> LocalStorage:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage {self.url} is unavailable: {e.strerror or e}") from e

    def confine(self, path: str | os.PathLike[str]) -> Path:
        """Resolve ``path`` (symlinks included) and refuse it unless it lies under the root."""
        p = Path(path)
        if not p.is_absolute():
            p = self.root / p
        resolved = p.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise StorageError(f"path {str(path)!r} resolves to {str(resolved)!r}, outside storage root {self.root}")
        return resolved

    def path(self, key: str) -> Path:
        """The confined local path of ``key`` (local backend only)."""
        return self.confine(validate_key(key))

    def job_dir(self, job_id: str) -> Path:
        return self.confine(Path("jobs") / validate_job_id(job_id))

    def upload_path(self, digest: str) -> Path:
        return self.confine(upload_key(digest))

    # -- primitives ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer(self, key: str, pipelined: bool = False) -> Iterator[HashingWriter]:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.confine(dest)  # again: mkdir cannot have created a way out, but a racing symlink could
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                # A large object (a checkpoint) is hashed and written on threads of their own, and its pages leave
                # the page cache as they are written (see CacheDroppingFile).
                dropping = CacheDroppingFile(f) if pipelined else None
                with finishing(PipelinedHashingWriter(dropping, copy=False) if dropping else HashingWriter(f)) as w:
                    yield w  # its threads are stopped before the temp file is unlinked on an exception
                f.flush()
                os.fsync(f.fileno())
                if dropping is not None:
                    dropping.drop_all()
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_local_file(self, key: str, path: Path) -> str:
        with self.open_write(key) as w, open(path, "rb") as f:
            while block := f.read(1 << 20):
                w.write(block)
        return w.sha256

    def put_with(self, key: str, writer: Callable[[Path], None], suffix: str = ".tmp") -> str:
        # Write the temp file next to its destination: os.replace is then a rename, not a copy.
        return self.write_atomic(self.path(key), writer, tmp_suffix=suffix)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def own_path(self, key: str) -> Path:
        """The literal path of ``key``, for deleting or listing: StorageError when reaching it means following a
        symlink (out of the root, or to another job's directory or the uploads inside it). Reads may follow one
        (they are verified against a sha256); deletes never do.
        """
        literal = self.root / validate_key(key)
        resolved = self.confine(key)  # out of the root: "path 'jobs/<id>/ckpt' resolves to ..., outside ..."
        if self.confine(literal.parent) != literal.parent:  # a directory on the way is a symlink
            raise StorageError(f"path {key!r} resolves to {str(resolved)!r} through a symlink; traind never follows "
                               "a job's directories elsewhere")
        return literal

    def delete(self, key: str) -> None:
        with contextlib.suppress(StorageError, OSError):
            self.own_path(key).unlink(missing_ok=True)  # a symlink itself is removed, never its target

    def delete_prefix(self, prefix: str) -> None:
        import shutil

        d = self.own_path(prefix)
        if d.is_symlink():
            d.unlink()
        elif d != self.root:
            shutil.rmtree(d, ignore_errors=True)

    def cleanup_incomplete(self, prefix: str) -> int:
        d = self.own_path(prefix)
        if d.is_symlink():  # a directory symlinked elsewhere: listing it would delete someone else's temp files
            raise StorageError(f"path {prefix!r} resolves to {str(self.confine(prefix))!r} through a symlink; traind "
                               "never follows a job's directories elsewhere")
        n = 0
        for tmp in d.glob(".*.tmp*") if d.is_dir() else ():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # a symlink is removed itself, never its target
                n += 1
        return n

    @contextlib.contextmanager
    def local_file(self, key: str, sha256: str, suffix: str = "", what: str | None = None) -> Iterator[Path]:
        p = self.path(key)  # no copy: verify the file in place
        what = what or key
        if not p.exists():
            raise CheckpointError(f"{what} is missing from {self.url}")
        if sha256_file(p) != sha256:
            raise CheckpointError(f"{what} failed its sha256 check (torn or corrupt)")
        yield p

    # -- path API kept for local callers and tests ---------------------------------------------------------------
    def write_atomic(self, dest: Path, writer: Callable[[Path], None], tmp_suffix: str = ".tmp") -> str:
        """Write ``dest`` via ``writer(tmp_path)``, fsync, rename into place; return its sha256.

        A crash at any point leaves either the old file or the complete new one, never a torn one.
        """
        dest = self.confine(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=tmp_suffix, dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            writer(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            digest = sha256_file(tmp)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            return digest
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_bytes_atomic(self, dest: Path, data: bytes) -> str:
        return self.write_atomic(dest, lambda p: p.write_bytes(data))

    def get_arrays(self, digest: str, max_bytes: int | None = None) -> dict[str, np.ndarray]:
        path = self.upload_path(digest)
        if not path.exists():
            raise StorageError(f"upload {digest} not found under {self.root / 'uploads'}")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise LimitError([f"upload {digest}: {size} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
        return super().get_arrays(digest, max_bytes)
