"""A bounded, content-addressed local cache of uploads fetched from object storage (one per worker machine).

Entries are named by their sha256, written atomically (temp + ``os.replace``, so worker processes on one machine can
share the directory) and verified on every read: a corrupt entry is deleted and refetched. Least recently used
entries are evicted past ``max_bytes``.

>>> import hashlib, tempfile
>>> c = UploadCache(tempfile.mkdtemp(), max_bytes=1 << 20)
>>> d = hashlib.sha256(b"data").hexdigest()
>>> c.put(d, b"data"); c.get(d)
b'data'
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from jobs.storage.base import DIGEST_RE

log = logging.getLogger("traind.worker")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).resolve() / "traind" / "uploads"


class UploadCache:
    """``get(digest)`` -> verified bytes or None; ``put(digest, data)``; counters ``hits``/``misses``/``corrupt``."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, max_bytes: int = 10 * 1024**3) -> None:
        self.dir = Path(directory) if directory is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self.hits = self.misses = self.corrupt = 0

    def _path(self, digest: str) -> Path:
        if not DIGEST_RE.fullmatch(digest):
            raise ValueError(f"cache: invalid digest {digest!r}")
        return self.dir / f"{digest}.npz"

    def get(self, digest: str) -> bytes | None:
        p = self._path(digest)
        try:
            data = p.read_bytes()
        except OSError:
            self.misses += 1
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            # Bit rot, a truncated copy, someone's edit: never use it, fetch it again.
            log.warning("upload cache: %s is corrupt (sha256 mismatch); refetching", p)
            self.corrupt += 1
            self.misses += 1
            with contextlib.suppress(OSError):
                p.unlink()
            return None
        self.hits += 1
        with contextlib.suppress(OSError):
            os.utime(p)  # LRU by mtime
        return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # larger than the whole cache: keeping it would evict everything else
        p = self._path(digest)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=self.dir)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, p)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.evict(keep=p)
        except OSError as e:  # a full or read-only cache disk costs a refetch, never the job
            log.warning("upload cache: could not store %s: %s", digest, e)

    def evict(self, keep: Path | None = None) -> None:
        """Delete least recently used entries until the cache fits ``max_bytes``."""
        entries = []
        for p in self.dir.glob("*.npz"):
            with contextlib.suppress(OSError):
                st = p.stat()
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(e[1] for e in entries)
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*.npz")) if self.dir.is_dir() else 0
