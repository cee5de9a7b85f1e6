"""What bounds a checkpoint write on this machine: each pass of traind's writer alone, next to a raw write.

A checkpoint write makes three passes over its bytes: zipfile's CRC-32 (the ``.npz`` format needs it), the sha256
the manifest records (computed while writing, no re-read) and the write itself. ``jobs.storage.streams.
PipelinedHashingWriter`` overlaps them on threads, so its pace is bounded by the slowest pass and by what the cores
have to give. This measures, on the same arrays (by default the 1 GB row of ``bench.ckpt_scale``: 3 GB of float32
weights + Adam moments), alternating, ``--reps`` times each:

- ``sha256``: ``hashlib.sha256`` over the arrays in one thread (one stream cannot be hashed in parallel);
- ``crc32``: ``zlib.crc32`` over them (zipfile's);
- ``writer-null``: traind's checkpoint writer (``write_npz`` into the pipelined hashing writer) into a sink that
  drops the bytes: the writer's CPU ceiling, no disk;
- ``writer-file``: the same into a new local file (``LocalStorage.open_write(pipelined=True)``: the product path,
  page-cache dropping and fsync included);
- ``tree-null`` / ``tree-file``: the same two with the sha256 replaced by a hash list that two threads can share
  (each written chunk hashed on its own, round-robin over 2 threads; bench-only, not a format traind writes): does
  hashing in parallel lift the ceiling on this machine?
- ``writer-file-isal``: ``writer-file`` with zipfile's CRC-32 computed by ISA-L (``isal.isal_zlib.crc32``, same
  values, SIMD): only where the ``isal`` package is installed (it is not a traind dependency);
- ``lean-direct``: what a leaner format could cost: the arrays' bytes one after another (no zip, so no CRC-32),
  hashed as a list on 2 threads, written with ``O_DIRECT`` from a page-aligned buffer (no page-cache copy), fsync;
  bench-only, to size the gain before changing traind's checkpoint format (Linux, where ``O_DIRECT`` works);
- ``raw-new``: a plain sequential write + fsync of the same arrays to a new file (the reference of issue 13's
  ``>= 0.8x`` goal).

Every file is kept until the run's end, so each write needs new page-cache pages, as a checkpoint does. CPU s/GB
is the process' user + system time per GB while the variant ran (all threads).

    python -m bench.write_ceiling [--gb 3] [--reps 5] [--smoke]
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from bench import _util as u
from jobs.storage.ckpt_format import CHUNK_BYTES as CHUNK  # the pieces the checkpoint writer hands on: numpy's 16 MiB

NAME = "write_ceiling"


class _NullSink:
    def write(self, data: bytes | memoryview, /) -> int:
        return len(data)

    def flush(self) -> None:
        pass


class _TreeWriter:
    """A write-only stream hashing its chunks on ``k`` threads (round-robin) and writing them on another: the
    parallel-digest alternative to ``PipelinedHashingWriter``, measured only (the chunks must stay unchanged)."""

    def __init__(self, raw: Any, k: int = 2, depth: int = 4) -> None:
        self.raw, self.size, self._n = raw, 0, 0
        self.digests: dict[int, bytes] = {}
        self._hq: list[queue.Queue[Any]] = [queue.Queue(depth) for _ in range(k)]
        self._wq: queue.Queue[Any] = queue.Queue(depth)
        self._threads = [threading.Thread(target=self._hash_loop, args=(q,), daemon=True) for q in self._hq]
        self._threads.append(threading.Thread(target=self._write_loop, daemon=True))
        for t in self._threads:
            t.start()

    def _hash_loop(self, q: queue.Queue[Any]) -> None:
        while (item := q.get()) is not None:
            self.digests[item[0]] = hashlib.sha256(item[1]).digest()

    def _write_loop(self) -> None:
        while (chunk := self._wq.get()) is not None:
            self.raw.write(chunk)

    def write(self, data: Any) -> int:
        chunk = data if isinstance(data, bytes) else memoryview(data).cast("B")
        self._hq[self._n % len(self._hq)].put((self._n, chunk))
        self._wq.put(chunk)
        self._n += 1
        self.size += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        pass

    def finish(self) -> str:
        for q in [*self._hq, self._wq]:
            q.put(None)
        for t in self._threads:
            t.join()
        return hashlib.sha256(b"".join(self.digests[i] for i in range(self._n))).hexdigest()


class _DirectSink:
    """Bytes to a new file with ``O_DIRECT``: gathered into a page-aligned 16 MiB buffer (anonymous mmap), written
    when full; the tail is padded to the block size and the file truncated back (bench-only)."""

    def __init__(self, path: Path) -> None:
        import mmap

        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        self._buf = mmap.mmap(-1, CHUNK)
        self._mv = memoryview(self._buf)
        self._fill = self.size = 0

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        i = 0
        while i < mv.nbytes:
            n = min(CHUNK - self._fill, mv.nbytes - i)
            self._mv[self._fill:self._fill + n] = mv[i:i + n]
            self._fill += n
            i += n
            if self._fill == CHUNK:
                os.write(self.fd, self._mv)
                self._fill = 0
        self.size += mv.nbytes
        return mv.nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._fill:
            padded = -(-self._fill // 4096) * 4096
            self._mv[self._fill:padded] = bytes(padded - self._fill)
            os.write(self.fd, self._mv[:padded])
        os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)
        os.close(self.fd)
        self._mv.release()
        self._buf.close()


def _arrays(nbytes: int, n: int = 8) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.standard_normal(nbytes // 4 // n, dtype=np.float32) for _ in range(n)]


def _pieces(arrays: list[Any]) -> Any:
    for a in arrays:
        mv = memoryview(a).cast("B")
        for i in range(0, mv.nbytes, CHUNK):
            yield mv[i:i + CHUNK]


def _timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``."""
    c0, t0 = os.times(), time.perf_counter()
    fn()
    c1 = os.times()
    return time.perf_counter() - t0, (c1.user - c0.user) + (c1.system - c0.system)


def body(run: u.Run) -> None:
    from bench.ckpt_scale import raw_write
    from jobs.storage import ckpt_format as fmt
    from jobs.storage.local import LocalStorage
    from jobs.storage.streams import PipelinedHashingWriter

    gb = 0.0625 if run.args.smoke else run.args.gb
    reps = 2 if run.args.smoke else run.args.reps
    arrays = _arrays(int(gb * 1e9))
    groups = {"w": arrays[: len(arrays) // 2], "o": arrays[len(arrays) // 2:]}
    nbytes = sum(a.nbytes for a in arrays)
    store = LocalStorage(run.dir / "storage").ensure()
    kept: list[Path] = []

    def sha() -> None:
        h = hashlib.sha256()
        for p in _pieces(arrays):
            h.update(p)

    def crc() -> None:
        c = 0
        for p in _pieces(arrays):
            c = zlib.crc32(p, c)

    def writer_null() -> None:
        w = PipelinedHashingWriter(_NullSink(), copy=False)
        fmt.write_npz(w, groups)
        w.finish()

    def writer_file() -> None:
        key = f"ceiling/w{len(kept)}.npz"
        with store.open_write(key, pipelined=True) as w:
            fmt.write_npz(w, groups)
        kept.append(store.path(key))

    def tree_null() -> None:
        w = _TreeWriter(_NullSink())
        fmt.write_npz(w, groups)
        w.finish()

    def tree_file() -> None:
        # the product's local sink (page-cache dropping, fsync) with the tree hash; no temp file + rename (ms)
        from jobs.storage.streams import CacheDroppingFile

        kept.append(run.dir / f"tree-{len(kept)}.npz")
        with open(kept[-1], "wb") as f:
            dropping = CacheDroppingFile(f)
            w = _TreeWriter(dropping)
            fmt.write_npz(w, groups)
            w.finish()
            f.flush()
            os.fsync(f.fileno())
            dropping.drop_all()

    def writer_file_isal() -> None:
        import zipfile

        from isal import isal_zlib

        saved = zipfile.crc32  # type: ignore[attr-defined]  # zipfile's module-level alias of zlib.crc32
        zipfile.crc32 = isal_zlib.crc32  # type: ignore[attr-defined]
        try:
            writer_file()
        finally:
            zipfile.crc32 = saved  # type: ignore[attr-defined]

    def lean_direct() -> None:
        kept.append(run.dir / f"lean-{len(kept)}.bin")
        sink = _DirectSink(kept[-1])
        w = _TreeWriter(sink)
        for piece in _pieces(arrays):
            w.write(piece)
        w.finish()
        sink.close()

    def raw_new() -> None:
        kept.append(run.dir / f"raw-{len(kept)}.bin")
        raw_write(kept[-1], 0, arrays=arrays, keep=True)

    variants = {"sha256": sha, "crc32": crc, "writer-null": writer_null, "writer-file": writer_file,
                "tree-null": tree_null, "tree-file": tree_file, "lean-direct": lean_direct, "raw-new": raw_new}
    try:  # macOS has no O_DIRECT; tmpfs and some other filesystems refuse it
        os.close(os.open(run.dir / "probe-direct", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except (AttributeError, OSError):
        del variants["lean-direct"]
    try:
        import isal  # noqa: F401

        variants["writer-file-isal"] = writer_file_isal
    except ImportError:
        pass
    res: dict[str, dict[str, list[float]]] = {v: {"mb_s": [], "cpu_s_per_gb": []} for v in variants}
    try:
        for _ in range(reps):
            for v, fn in variants.items():
                wall, cpu = _timed(fn)
                res[v]["mb_s"].append(nbytes / wall / 1e6)
                res[v]["cpu_s_per_gb"].append(cpu / (nbytes / 1e9))
    finally:
        for p in kept:
            p.unlink(missing_ok=True)
    raw = u.median(res["raw-new"]["mb_s"])
    rows = [{"variant": v, "mb_s": u.median(r["mb_s"]), "min_mb_s": min(r["mb_s"]), "max_mb_s": max(r["mb_s"]),
             "vs_raw_new": u.ratio(u.median(r["mb_s"]), raw), "cpu_s_per_gb": u.median(r["cpu_s_per_gb"])}
            for v, r in res.items()]
    run.results.update({"gb": gb, "bytes": nbytes, "reps": reps, "cpus": os.cpu_count(), "runs": res, "rows": rows,
                        "needed_for_goal_mb_s": 0.8 * raw})
    run.table(f"what bounds a checkpoint write: {nbytes / 1e9:.2f} GB of float32 arrays, {reps} reps alternating, "
              f"every file new; medians (min-max); vs_raw_new = median / raw-new's median; {os.cpu_count()} cores; "
              f">= 0.8x raw-new needs {0.8 * raw:.0f} MB/s", rows,
              ["variant", "mb_s", "min_mb_s", "max_mb_s", "vs_raw_new", "cpu_s_per_gb"])


def add_args(p: Any) -> None:
    p.add_argument("--gb", type=float, default=3.0, help="GB of arrays (default 3: the 1 GB model with Adam)")
    p.add_argument("--reps", type=int, default=5)


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
