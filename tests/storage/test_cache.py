"""The worker's bounded local upload cache: hits, LRU eviction, corrupt entries detected by hash and refetched."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from jobs.storage.factory import open_storage
from worker.cache import UploadCache


def _d(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hit_miss_and_corrupt_entry(tmp_path: Path) -> None:
    c = UploadCache(tmp_path, max_bytes=1000)
    assert c.get(_d(b"a")) is None
    c.put(_d(b"a"), b"a")
    assert c.get(_d(b"a")) == b"a"
    (tmp_path / f"{_d(b'a')}.npz").write_bytes(b"b")  # bit rot
    assert c.get(_d(b"a")) is None, "a corrupt entry must never be returned"
    assert not (tmp_path / f"{_d(b'a')}.npz").exists(), "the corrupt entry is deleted"
    assert (c.hits, c.misses, c.corrupt) == (1, 2, 1)


def test_bounded_lru(tmp_path: Path) -> None:
    c = UploadCache(tmp_path, max_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    for i, b in enumerate(blobs[:2]):
        c.put(_d(b), b)
        os.utime(tmp_path / f"{_d(b)}.npz", (time.time() - 100 + i, time.time() - 100 + i))
    assert c.get(_d(blobs[0])) == blobs[0]  # touch: blob 1 is now the least recently used
    c.put(_d(blobs[2]), blobs[2])
    assert c.size_bytes() <= 250
    assert c.get(_d(blobs[1])) is None
    assert c.get(_d(blobs[0])) == blobs[0] and c.get(_d(blobs[2])) == blobs[2]
    c.put(_d(b"x" * 300), b"x" * 300)  # larger than the whole cache: not kept, nothing evicted for it
    assert c.get(_d(blobs[0])) == blobs[0]


def test_storage_uses_the_cache_and_refetches_a_corrupt_entry(s3_url: str, tmp_path: Path) -> None:
    """Through real S3: the second load is served from the cache; a corrupted cache entry is fetched again."""
    client_side = open_storage(s3_url)
    x = np.arange(1000.0)
    digest = client_side.put_arrays({"x": x})
    worker_side = open_storage(s3_url)
    worker_side.cache = cache = UploadCache(tmp_path / "cache", max_bytes=10**8)
    for _ in range(2):
        np.testing.assert_array_equal(worker_side.get_arrays(digest)["x"], x)
    assert (cache.hits, cache.misses) == (1, 1)
    entry = tmp_path / "cache" / f"{digest}.npz"
    entry.write_bytes(entry.read_bytes()[:-10])  # truncated copy
    np.testing.assert_array_equal(worker_side.get_arrays(digest)["x"], x)
    assert cache.corrupt == 1 and hashlib.sha256(entry.read_bytes()).hexdigest() == digest, "refetched and re-cached"
