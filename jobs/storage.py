"""Shared checkpoint storage: path confinement, atomic writes, content-addressed array uploads.

>>> import tempfile
>>> st = Storage(tempfile.mkdtemp())
>>> st.job_dir("abc123").name
'abc123'
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.errors import LimitError, StorageError

if TYPE_CHECKING:
    import numpy as np  # imported where arrays are handled: job-id checks and paths must not load numpy

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a safe id (no '/', '..', control chars), else raise StorageError."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):  # fullmatch: '$' allows a trailing \n
        raise StorageError(
            f"invalid job id {job_id!r}: expected 1-64 characters of [A-Za-z0-9_-], starting with a letter or digit"
        )
    return job_id


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
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


class Storage:
    """The storage root (a local path or an NFS mount shared by all workers)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def ensure(self) -> Storage:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def confine(self, path: str | os.PathLike[str]) -> Path:
        """Resolve ``path`` (symlinks included) and refuse it unless it lies under the root."""
        p = Path(path)
        if not p.is_absolute():
            p = self.root / p
        resolved = p.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise StorageError(f"path {str(path)!r} resolves to {str(resolved)!r}, outside storage root {self.root}")
        return resolved

    def job_dir(self, job_id: str) -> Path:
        return self.confine(Path("jobs") / validate_job_id(job_id))

    def upload_path(self, digest: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", digest or ""):
            raise StorageError(f"invalid upload digest {digest!r}: expected 64 hex characters (sha256)")
        return self.confine(Path("uploads") / f"{digest}.npz")

    # -- atomic writes -------------------------------------------------------------------------------------------
    def write_atomic(self, dest: Path, writer: Callable[[Path], None], tmp_suffix: str = ".tmp") -> str:
        """Write ``dest`` via ``writer(tmp_path)``, fsync, rename into place; return its sha256.

        A crash at any point leaves either the old file or the complete new one, never a torn one.
        """
        dest = self.confine(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # tmp_suffix lets writers that insist on an extension (Keras: .keras, .weights.h5) write the temp file.
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

    # -- uploads -------------------------------------------------------------------------------------------------
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
        digest = hashlib.sha256(data).hexdigest()
        dest = self.upload_path(digest)
        if not dest.exists():
            self.write_bytes_atomic(dest, data)
        return digest

    def get_arrays(self, digest: str, max_bytes: int | None = None) -> dict[str, np.ndarray]:
        """Load an uploaded .npz (``allow_pickle=False``), verifying its sha256 and size."""
        import numpy as np

        path = self.upload_path(digest)
        if not path.exists():
            raise StorageError(f"upload {digest} not found under {self.root / 'uploads'}")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise LimitError([f"upload {digest}: {size} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
        if sha256_file(path) != digest:
            raise StorageError(f"upload {digest} is corrupt: its sha256 does not match its name")
        try:
            with np.load(path, allow_pickle=False) as z:
                if max_bytes is not None:
                    # A small zip can inflate to a huge array: check uncompressed sizes before reading.
                    with zipfile.ZipFile(path) as zf:
                        total = sum(i.file_size for i in zf.infolist())
                    if total > max_bytes:
                        raise LimitError([f"upload {digest}: {total} bytes uncompressed exceeds "
                                          f"TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
                return {k: z[k] for k in z.files}
        except LimitError:
            raise  # a LimitError is a ValueError too: keep it from being reported as a corrupt upload
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise StorageError(f"upload {digest} could not be loaded safely: {e}") from e
