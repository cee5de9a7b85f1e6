"""An attempt's checkpoint life on the in-memory ledger and a real local storage (no redis-server, no TensorFlow):
background write + fenced commit with retention and lazy exports, a fenced commit leaving no files, the choice of
the checkpoint to resume from, and the record reset at an attempt's start."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.contract.spec import JobSpec
from jobs.errors import FencedError
from jobs.storage.ckpt_format import ckpt_key
from jobs.storage.factory import open_storage
from worker.checkpoint import Checkpoints, Restored, Snapshot
from worker.ledger import AttemptRecord, MemoryLedger
from worker.policy import KeepPolicy
from worker.resume import resume


def _snap(epoch: int, batch: int = 0, value: float = 0.0) -> Snapshot:
    return Snapshot(epoch=epoch, batch=batch, weights=[np.full((2, 2), value, np.float32)],
                    optimizer=[np.zeros(3, np.float32)], state={"tracker": {"best": value, "best_epoch": epoch}},
                    metrics={"loss": value})


def _spec(**kw: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "unit", "model": {"builder": "tests.models:mlp"},
                                   "data": {"loader": "tests.models:load_data"}, "fit": {"epochs": 5}, **kw})


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    return tmp_path / "jobs" / "job1" / "ckpt"


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_epoch_end_checkpoints_commit_in_the_background_keeping_last_and_best(tmp_path: Path, ckpt_dir: Path
                                                                              ) -> None:
    led = MemoryLedger("job1")
    ck = Checkpoints(open_storage(str(tmp_path)), led, KeepPolicy(keep_last=1))
    try:
        best = ckpt_key(1, 0)
        for e in (1, 2, 3):
            ck.offer(lambda e=e: _snap(e, value=float(e)), best, must=True, export={"best": e == 1, "latest": True})
        ck.flush()
    finally:
        ck.close()
    assert sorted(led.checkpoints()) == [ckpt_key(1, 0), ckpt_key(3, 0)]  # epoch 2 retired
    assert _files(ckpt_dir) == ["e000001-b000000-a1.json", "e000001-b000000-a1.npz", "e000003-b000000-a1.json",
                                "e000003-b000000-a1.npz"]
    assert led.fields["best_ckpt_key"] == best
    assert led.fields["best_checkpoint"]["key"] == best and led.fields["best_checkpoint"]["format"] == "checkpoint"
    assert led.fields["latest_checkpoint"]["key"] == ckpt_key(3, 0)
    assert [n for n, _ in led.samples][:2] == ["checkpoint_write_seconds", "checkpoint_bytes"]


def test_skip_backpressure_skips_while_a_write_runs(tmp_path: Path) -> None:
    release = threading.Event()

    class HeldWrite(Checkpoints):
        def write(self, snap: Snapshot) -> dict[str, Any]:
            assert release.wait(30), "the test never released the write"
            return super().write(snap)

    led = MemoryLedger("job1")
    ck = HeldWrite(open_storage(str(tmp_path)), led)
    taken: list[int] = []
    try:
        assert ck.offer(lambda: _snap(1), None, must=True) is not None
        assert ck.busy()
        assert ck.offer(lambda: taken.append(2) or _snap(2), None, must=False) is None  # skipped: no host copy
        release.set()
        ck.flush()
        assert ck.offer(lambda: _snap(3), None, must=False) is not None  # nothing in flight: taken
        ck.flush()
    finally:
        release.set()
        ck.close()
    assert taken == [] and len(ck.skipped) == 1
    assert sorted(led.checkpoints()) == [ckpt_key(3, 0)]  # epoch 2 never written; epoch 1 retired (keep_last=1)


def test_a_fenced_commit_leaves_no_files(tmp_path: Path, ckpt_dir: Path) -> None:
    led = MemoryLedger("job1")
    ck = Checkpoints(open_storage(str(tmp_path)), led)
    led.lose_lease()
    try:
        with pytest.raises(FencedError):
            ck.save(_snap(1))
    finally:
        ck.close()
    assert led.checkpoints() == {} and _files(ckpt_dir) == []


def _committed(tmp_path: Path, led: MemoryLedger, snaps: list[Snapshot]) -> dict[int, dict[str, Any]]:
    ck = Checkpoints(open_storage(str(tmp_path)), led, KeepPolicy(keep_last=10))
    try:
        for s in snaps:
            ck.save(s)
    finally:
        ck.close()
    return led.checkpoints()


def test_select_prefers_preemption_then_policy_and_skips_corrupt_ones(tmp_path: Path) -> None:
    led = MemoryLedger("job1", attempt=2)
    index = _committed(tmp_path, led, [_snap(1, value=1.0), _snap(2, value=2.0), _snap(2, 5, value=2.5)])
    ck = Checkpoints(open_storage(str(tmp_path)), led)
    try:
        r, events = ck.select(index, "best", ckpt_key(1, 0), ckpt_key(2, 5))
        assert r is not None and r.manifest["key"] == ckpt_key(2, 5) and events[-1]["why"] == "preemption"
        r, events = ck.select(index, "best", ckpt_key(1, 0), None)
        assert r is not None and r.manifest["key"] == ckpt_key(1, 0) and events[-1]["why"] == "best"
        # A torn file is skipped with an event; the nearest earlier valid one is the fallback.
        path = tmp_path / "jobs" / "job1" / index[ckpt_key(2, 5)]["file"]
        path.write_bytes(path.read_bytes()[:-10])
        r, events = ck.select(index, "latest", None, None)
        assert r is not None and r.manifest["key"] == ckpt_key(2, 0)
        assert [e["kind"] for e in events] == ["skipped_checkpoint", "resumed"] and events[1]["why"] == "fallback"
        np.testing.assert_array_equal(r.weights[0], np.full((2, 2), 2.0, np.float32))
    finally:
        ck.close()


def test_resume_resets_the_record_to_the_resume_point(tmp_path: Path) -> None:
    led = MemoryLedger("job1", attempt=2)
    _committed(tmp_path, led, [_snap(1, value=1.0), _snap(2, value=2.0), _snap(3, value=3.0)])
    led.write(history_set={e: {"epoch": e} for e in (1, 2, 3, 4)})
    applied: list[Restored] = []
    ck = Checkpoints(open_storage(str(tmp_path)), led)
    try:
        point = resume(led, ck, _spec(resume_from="best"), AttemptRecord(worker="w2", best_ckpt_key=ckpt_key(2, 0)),
                       10, applied.append)
    finally:
        ck.close()
    assert (point.epoch, point.batch) == (2, 0) and [r.manifest["epoch"] for r in applied] == [2]
    assert [h["epoch"] for h in led.history()] == [1, 2]  # epochs 3-4 will be redone
    assert sorted(led.checkpoints()) == [ckpt_key(1, 0), ckpt_key(2, 0)]  # epoch 3's checkpoint is stale
    assert not (tmp_path / "jobs" / "job1" / "ckpt" / "e000003-b000000-a1.npz").exists()
    assert led.fields["epoch"] == 2 and led.fields["resume_epoch"] == 2 and led.fields["steps"] == 10
    assert led.events()[-1]["msg"] == "attempt 2 training on worker w2 from epoch 3/5"


def test_resume_without_a_checkpoint_starts_over_and_forgets_the_best(tmp_path: Path) -> None:
    led = MemoryLedger("job1", attempt=3, fields={"best_epoch": 2, "best_value": 0.1, "best_ckpt_key": 2000000})
    led.write(history_set={1: {"epoch": 1}})
    ck = Checkpoints(open_storage(str(tmp_path)), led)
    try:
        point = resume(led, ck, _spec(), AttemptRecord(worker="w3"), 10, lambda r: None)
    finally:
        ck.close()
    assert (point.epoch, point.batch, point.restored) == (0, 0, None)
    assert led.history() == [] and "best_epoch" not in led.fields and "best_ckpt_key" not in led.fields
    assert [e["kind"] for e in led.events()] == ["no_checkpoint", "training"]
