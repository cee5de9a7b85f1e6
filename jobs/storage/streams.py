"""Write-only streams that hash what passes through them: sha256 while writing, never a re-read.

A checkpoint of a large model is hundreds of MB to GBs. Writing it costs three passes over the bytes: zipfile's
crc32 (in the producing thread), sha256 and the write itself. In one thread they add up (here: crc32 ~4 GB/s,
sha256 ~1.4 GB/s, page-cache write + fsync ~1 GB/s: ~0.5 GB/s together). :class:`PipelinedHashingWriter` runs the
sha256 and the write on two threads of their own (``hashlib`` and file writes release the GIL for large buffers),
so the three passes overlap and the stream goes at the pace of the slowest one, the disk.

>>> import io
>>> w = HashingWriter(io.BytesIO()); _ = w.write(b"abc"); w.finish(); w.sha256[:12], w.size
('ba7816bf8f01', 3)
>>> p = PipelinedHashingWriter(io.BytesIO()); _ = p.write(b"abc"); p.finish(); p.sha256 == w.sha256
True
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Iterator
from typing import IO, Protocol


class Sink(Protocol):
    """Where a hashing writer's bytes go: a binary file, a spool, a :class:`CacheDroppingFile`."""

    def write(self, data: bytes | memoryview, /) -> int | None: ...

    def flush(self) -> None: ...


class HashingWriter:
    """A write-only stream that hashes what passes through (sha256 while writing: no re-read)."""

    def __init__(self, raw: Sink) -> None:
        self.raw = raw
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        mv = memoryview(data).cast("B")
        self._h.update(mv)
        self.raw.write(mv)
        self.size += mv.nbytes
        return mv.nbytes

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self.raw.flush()

    def finish(self) -> None:
        """Everything written has reached ``raw`` (a no-op here; the pipelined writer waits for its threads)."""

    def abort(self) -> None:
        """Stop without finishing (the write failed or was interrupted); the object is not published."""

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()


_END = object()


class PipelinedHashingWriter(HashingWriter):
    """:class:`HashingWriter` whose sha256 and writes run on two threads, overlapping each other and the producer.

    Each chunk goes to both threads in order through bounded queues (``depth`` chunks: the memory held in flight is
    bounded, about ``depth`` times the producer's chunk size, 16 MiB for checkpoints). The threads read a chunk after
    ``write`` returns, so it must not change until :meth:`finish`: ``bytes`` are kept as they are; other buffers are
    copied unless ``copy=False``, which a producer passes when it guarantees that (a checkpoint's snapshot arrays,
    written as memoryviews with no copy at all). :meth:`finish` waits for both threads and raises the write's error,
    if any; the producer also sees it on its next :meth:`write`.
    """

    def __init__(self, raw: Sink, depth: int = 4, copy: bool = True) -> None:
        super().__init__(raw)
        self._copy = copy
        self._hq: queue.Queue[object] = queue.Queue(depth)
        self._wq: queue.Queue[object] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._done = False
        self._threads = [threading.Thread(target=self._hash_loop, name="ckpt-sha256", daemon=True),
                         threading.Thread(target=self._write_loop, name="ckpt-write", daemon=True)]
        for t in self._threads:
            t.start()

    def _hash_loop(self) -> None:
        while (chunk := self._hq.get()) is not _END:
            self._h.update(chunk)  # type: ignore[arg-type]  # a chunk, not the _END sentinel

    def _write_loop(self) -> None:
        while (chunk := self._wq.get()) is not _END:
            if self._error is None:
                try:
                    self.raw.write(chunk)  # type: ignore[arg-type]  # a chunk, not the _END sentinel
                except BaseException as e:  # noqa: BLE001 - handed to the producer, which raises it
                    self._error = e
            self._wq.task_done()
        self._wq.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ValueError("write to a finished stream")
        self._raise()
        if isinstance(data, bytes) or not self._copy:
            chunk: bytes | memoryview = data if isinstance(data, bytes) else memoryview(data).cast("B")
        else:
            chunk = bytes(data)  # the threads read it later: it must not change
        self._hq.put(chunk)
        self._wq.put(chunk)
        self.size += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        if not self._done:
            self._wq.join()  # everything handed over so far is written
        self._raise()
        self.raw.flush()

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._hq.put(_END)
            self._wq.put(_END)
            for t in self._threads:
                t.join()

    def finish(self) -> None:
        self._stop()
        self._raise()

    def abort(self) -> None:
        self._stop()

    @property
    def sha256(self) -> str:
        self.finish()  # the digest covers every byte written
        return self._h.hexdigest()


@contextlib.contextmanager
def finishing(w: HashingWriter) -> Iterator[HashingWriter]:
    """Yield ``w``; when the block exits cleanly, :meth:`HashingWriter.finish` it (every byte reached its sink,
    errors raised); either way stop its threads, so a failed write is cleaned up with nothing left running."""
    try:
        yield w
        w.finish()
    finally:
        w.abort()  # after finish() a no-op


DROP_EVERY_BYTES = 64 * 2**20


class CacheDroppingFile:
    """A local file whose written pages leave the page cache as the write goes: every ``DROP_EVERY_BYTES``,
    ``fdatasync`` then ``posix_fadvise(DONTNEED)`` for that range; :meth:`drop_all` after the final fsync.

    A checkpoint is written once and read back only to resume, so keeping gigabytes of it cached only evicts what the
    machine does use. It is also faster where touching page-cache pages the kernel has not just freed is slow (a VM
    here: a loop of 300 MB writes that keeps its files fell from ~1.5 GB/s to ~380 MB/s once the cache had to grow;
    dropping as it went kept ~1.5 GB/s). Where ``posix_fadvise`` is missing (macOS) it only syncs.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.fd = f, f.fileno()
        self._start = self._done = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self.f.write(data) or 0
        self._done += n
        if self._done - self._start >= DROP_EVERY_BYTES:
            self.f.flush()
            getattr(os, "fdatasync", os.fsync)(self.fd)  # written back, so DONTNEED can free the pages
            self._drop(self._start, self._done - self._start)
            self._start = self._done
        return n

    def flush(self) -> None:
        self.f.flush()

    def drop_all(self) -> None:
        """After the file's final fsync: the rest of its pages."""
        self._drop(0, 0)

    def _drop(self, offset: int, length: int) -> None:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)
