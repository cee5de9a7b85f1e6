"""Bounded reads: an object larger than its limit is refused before its body is read, and a read stops as soon as it
passes the limit (the object may grow, or its size be misreported, between the size check and the read).

Every bounded read today is an upload, bounded by ``TRAIND_MAX_UPLOAD_BYTES``.

>>> import io
>>> read_capped(io.BytesIO(b"abc"), 3, "x")
b'abc'
>>> read_capped(io.BytesIO(b"abcd"), 3, "upload x")
Traceback (most recent call last):
...
jobs.errors.LimitError: invalid job spec (1 problem(s)):
  - upload x: more than 3 bytes, exceeds TRAIND_MAX_UPLOAD_BYTES=3
"""

from __future__ import annotations

from typing import Protocol

from jobs.errors import LimitError

READ_CHUNK = 8 * 2**20  # one ranged GET (object storage) or read() per chunk


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def check_size(size: int, max_bytes: int, what: str) -> None:
    """LimitError when ``size`` (from a stat or a HEAD, before reading) exceeds ``max_bytes``."""
    if size > max_bytes:
        raise LimitError([f"{what}: {size} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])


def read_capped(f: Readable, max_bytes: int, what: str, chunk: int = READ_CHUNK) -> bytes:
    """Everything ``f`` has, read in chunks; LimitError as soon as more than ``max_bytes`` came (at most
    ``max_bytes + 1`` bytes are ever read)."""
    parts: list[bytes] = []
    total = 0
    while block := f.read(min(chunk, max_bytes + 1 - total)):
        parts.append(block)
        total += len(block)
        if total > max_bytes:
            raise LimitError([f"{what}: more than {max_bytes} bytes, exceeds TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
    return b"".join(parts)
