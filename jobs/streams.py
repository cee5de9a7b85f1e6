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

import hashlib
import queue
import threading
from typing import IO


class HashingWriter:
    """A write-only stream that hashes what passes through (sha256 while writing: no re-read)."""

    def __init__(self, raw: IO[bytes]) -> None:
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

    def __init__(self, raw: IO[bytes], depth: int = 4, copy: bool = True) -> None:
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
            self._h.update(chunk)  # type: ignore[arg-type]

    def _write_loop(self) -> None:
        while (chunk := self._wq.get()) is not _END:
            if self._error is None:
                try:
                    self.raw.write(chunk)  # type: ignore[arg-type]
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
