"""The pipelined hashing writer: same bytes and sha256 as a plain write, errors surface, nothing half-published."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from jobs.storage import ckpt_format as fmt
from jobs.storage.factory import open_storage
from jobs.storage.streams import HashingWriter, PipelinedHashingWriter


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("ckpt-")}


def test_same_bytes_and_digest_as_the_plain_writer_even_when_the_caller_reuses_its_buffer() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.bytes(int(n)) for n in rng.integers(0, 3 << 20, size=40)]
    plain, piped = io.BytesIO(), io.BytesIO()
    a, b = HashingWriter(plain), PipelinedHashingWriter(piped, depth=2)
    scratch = bytearray(3 << 20)
    for c in chunks:
        a.write(c)
        scratch[: len(c)] = c
        b.write(memoryview(scratch)[: len(c)])  # a mutable buffer, overwritten by the next chunk right away
    b.finish()
    assert piped.getvalue() == plain.getvalue() == b"".join(chunks)
    assert b.sha256 == a.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert b.size == a.size == sum(map(len, chunks))
    assert not _threads()


class _FailsOnThird(io.RawIOBase):
    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        self.n += 1
        if self.n == 3:
            raise OSError(28, "No space left on device")
        return len(b)  # type: ignore[arg-type]


def test_a_write_error_reaches_the_producer_and_the_threads_stop() -> None:
    w = PipelinedHashingWriter(_FailsOnThird(), depth=1)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(50):  # the error is raised by a later write (or at the latest by finish)
            w.write(b"x" * 1024)
        w.finish()
    w.abort()
    assert not _threads()


def test_flush_means_written() -> None:
    raw = io.BytesIO()
    w = PipelinedHashingWriter(raw)
    w.write(b"a" * 100_000)
    w.flush()
    assert raw.getvalue() == b"a" * 100_000
    w.finish()


def test_local_pipelined_write_is_atomic_and_streams_a_real_checkpoint(tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    groups = {"w": [np.arange(5_000_000, dtype="float32")], "o": [np.ones((300, 300))], "e": None, "m": None}
    with st.open_write("jobs/j1/ckpt/a.npz", pipelined=True) as w:
        fmt.write_npz(w, groups)
    data = (tmp_path / "jobs/j1/ckpt/a.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == w.sha256 and len(data) == w.size
    back = fmt.unpack(data)
    assert np.array_equal(back["w"][0], groups["w"][0]) and np.array_equal(back["o"][0], groups["o"][0])

    with pytest.raises(RuntimeError, match="died"), st.open_write("jobs/j1/ckpt/b.npz", pipelined=True) as w2:
        w2.write(b"partial" * 1000)
        raise RuntimeError("writer died")
    assert sorted(os.listdir(tmp_path / "jobs/j1/ckpt")) == ["a.npz"], "no partial object, no temp file"
    assert not _threads()


def test_streamed_npz_members_are_byte_identical_to_numpy_savez() -> None:
    """write_npz writes contiguous arrays from memoryviews (no copy) but the same .npy bytes as np.savez, so older
    readers and np.load see no difference; unusual arrays (non-contiguous, 0-d, empty) take numpy's own path."""
    import zipfile

    rng = np.random.default_rng(1)
    groups = {"w": [rng.random((300, 7), dtype=np.float32), np.arange(10), np.ones(()), np.zeros((0, 3)),
                    rng.random((5, 5)).T, np.array([True, False]), rng.random((3000, 3000)).astype(np.float16)],
              "o": [np.ones(3, dtype=np.int8)], "e": None, "m": None}
    buf = io.BytesIO()
    fmt.write_npz(buf, groups)
    ours, ref = zipfile.ZipFile(io.BytesIO(buf.getvalue())), zipfile.ZipFile(io.BytesIO(fmt.pack(groups)))
    assert sorted(ours.namelist()) == sorted(ref.namelist())
    assert all(ours.read(n) == ref.read(n) for n in ref.namelist())


def test_local_checkpoint_writes_leave_the_page_cache_as_they_go(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipelined (checkpoint) write syncs and drops each written range, then the whole file after its fsync; the
    object is intact. A plain write drops nothing."""
    import jobs.storage.streams as streams

    monkeypatch.setattr(streams, "DROP_EVERY_BYTES", 1 << 20)
    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: (calls.append((off, n)), real(fd, off, n,
                                                                                                        advice))[1])
    st = open_storage(tmp_path)
    data = np.random.default_rng(2).bytes(5 << 20)
    with st.open_write("jobs/j1/ckpt/c.npz", pipelined=True) as w:
        for i in range(0, len(data), 256 << 10):
            w.write(data[i:i + (256 << 10)])
    assert (tmp_path / "jobs/j1/ckpt/c.npz").read_bytes() == data and w.sha256 == hashlib.sha256(data).hexdigest()
    assert calls == [(i << 20, 1 << 20) for i in range(5)] + [(0, 0)], calls
    calls.clear()
    st.put_bytes("jobs/j1/small.json", b"{}")
    assert calls == []
