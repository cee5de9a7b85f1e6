"""Issue 5.6: resource faults. A full disk during a checkpoint write fails the job with a storage error, keeps the
previous checkpoint intact and verifiable, and leaves no temp files. (Out of memory kills the worker process: that is
a dead worker, covered by the fault-tolerance suite in tests/fault/.)
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.client import Client
from jobs.redis.store import JobStore
from jobs.storage.ckpt_format import ckpt_key
from jobs.storage.factory import open_storage
from jobs.storage.local import LocalStorage
from tests.security.helpers import failed_with, good_spec, run_burst
from worker.checkpoint import Checkpoints
from worker.ledger import RedisLedger


def test_disk_full_during_a_checkpoint_write(
    client: Client, r: redis.Redis, redis_url: str, storage_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1's checkpoint (file + manifest) is written; epoch 2's write hits ENOSPC half way through."""
    real = LocalStorage.open_write  # every checkpoint write goes through it: the streamed .npz and the manifest
    calls: list[Path] = []

    @contextlib.contextmanager
    def disk_fills_up(self: LocalStorage, key: str, **kw: Any) -> Iterator[Any]:
        calls.append(Path(key))
        if len(calls) <= 2:
            with real(self, key, **kw) as w:
                yield w
            return
        with real(self, key, **kw) as w:  # the real atomic writer: the failure happens part way through its temp file
            w.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)

    monkeypatch.setattr(LocalStorage, "open_write", disk_fills_up)
    job = client.submit(good_spec("disk-full", epochs=3))
    run_burst(redis_url, storage_dir)

    error = failed_with(r, job.id)
    assert error == ("could not write checkpoint e000002-b000000-a1 (No space left on device); previous checkpoints "
                     "are intact"), error
    assert job.events()[-1]["msg"] == f"failed: storage error: {error}"
    assert [p.name for p in calls] == ["e000001-b000000-a1.npz", "e000001-b000000-a1.json", "e000002-b000000-a1.npz"]

    store = JobStore(r)
    index = store.checkpoints(job.id)
    assert sorted(index) == [ckpt_key(1, 0)], "only epoch 1's checkpoint was committed"
    ckpts = Checkpoints(open_storage(storage_dir), RedisLedger(store, job.id, 1, "verifier"))
    try:
        ckpts.verify(index[ckpt_key(1, 0)])  # exists and matches the sha256 recorded in Redis
        assert ckpts.load(index[ckpt_key(1, 0)]).weights, "the previous checkpoint is readable"
    finally:
        ckpts.close()
    ckpt_dir = storage_dir / "jobs" / job.id / "ckpt"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["e000001-b000000-a1.json", "e000001-b000000-a1.npz"], \
        "a temp file or a torn checkpoint was left behind"
