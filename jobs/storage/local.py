"""The local backend of :class:`jobs.storage.base.Storage`: a directory (or an NFS mount shared by all workers).

Writes are atomic (temp file + fsync + ``os.replace`` + directory fsync); every path is confined to the root, with
symlinks resolved, and deletes never follow a symlink.

>>> import tempfile
>>> st = LocalStorage(tempfile.mkdtemp())
>>> st.path("jobs/abc/x.npz").relative_to(st.root).as_posix()
'jobs/abc/x.npz'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jobs.contract.ids import validate_job_id
from jobs.errors import CheckpointError, StorageError
from jobs.storage.base import Storage, sha256_file
from jobs.storage.limits import check_size, read_capped
from jobs.storage.location import parse_location
from jobs.storage.names import upload_key, validate_key
from jobs.storage.streams import CacheDroppingFile, HashingWriter, PipelinedHashingWriter, finishing


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


class LocalStorage(Storage):
    """A local directory (or an NFS mount shared by all workers): temp file + fsync + ``os.replace``."""

    is_local = True

    def __init__(self, root: str | os.PathLike[str] | None = None, **_: Any) -> None:
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

    def read_bytes(self, key: str, max_bytes: int | None = None, what: str | None = None) -> bytes:
        if max_bytes is None:
            return self.path(key).read_bytes()
        with open(self.path(key), "rb") as f:
            check_size(os.fstat(f.fileno()).st_size, max_bytes, what or key)
            return read_capped(f, max_bytes, what or key)

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
