"""The one module deciding a job's best model: which checkpoint is the best during training, what is exported at
the end, and which record load_model reads (pure decisions; no redis-server, no TensorFlow)."""

from __future__ import annotations

import pytest

from jobs.errors import CheckpointError
from jobs.keras.best_model import BestModel, ExportPlan, choose, fallback
from jobs.storage.ckpt_format import ckpt_key


def test_best_key_follows_improvements_and_survives_a_resume_only_while_committed() -> None:
    b = BestModel()
    b.improved(2)
    assert b.key == ckpt_key(2, 0) and b.is_epoch(2) and not b.is_epoch(3)
    b.resumed(2, {ckpt_key(2, 0): {}})
    assert b.key == ckpt_key(2, 0)
    b.resumed(2, {ckpt_key(3, 0): {}})  # retention removed it
    assert b.key is None
    b.resumed(None, {ckpt_key(3, 0): {}})
    assert b.key is None


@pytest.mark.parametrize(("best_epoch", "done", "best_only", "plan"), [
    (5, 5, True, ExportPlan(latest=False, best_from_model=True, best_from_checkpoint=None)),
    (3, 5, False, ExportPlan(latest=True, best_from_model=False, best_from_checkpoint=ckpt_key(3, 0))),
    (None, 5, True, ExportPlan(latest=False, best_from_model=False, best_from_checkpoint=None)),
])
def test_end_plan(best_epoch: int | None, done: int, best_only: bool, plan: ExportPlan) -> None:
    b = BestModel()
    if best_epoch:
        b.improved(best_epoch)
    assert b.end_plan(done, best_only) == plan


def _lazy(key: int, sha: str = "a" * 64) -> dict:
    return {"file": "ckpt/x.npz", "sha256": sha, "format": "checkpoint", "key": key}


def test_a_lazy_record_loads_its_committed_checkpoint() -> None:
    manifest = {"key": ckpt_key(2, 0), "sha256": "a" * 64, "file": "ckpt/x.npz"}
    index = {ckpt_key(2, 0): manifest}
    c = choose("j", "best", {"best_checkpoint": _lazy(ckpt_key(2, 0))}, lambda: index)
    assert c.manifest == manifest and c.export is None


@pytest.mark.parametrize("index", [{}, {2000000: {"key": 2000000, "sha256": "b" * 64}}])
def test_a_lazy_record_whose_checkpoint_was_replaced_is_refused(index: dict) -> None:
    with pytest.raises(CheckpointError, match="no longer in the checkpoint index"):
        choose("j", "best", {"best_checkpoint": _lazy(2000000)}, lambda: index)


def test_exports_are_read_without_the_index_and_only_best_or_final() -> None:
    def no_index() -> dict:
        raise AssertionError("the index is read only when needed")

    rec = {"file": "best.keras", "sha256": "c" * 64, "format": "keras"}
    assert choose("j", "best", {"best_checkpoint": rec}, no_index).export == rec
    assert choose("j", "final", {"final_checkpoint": '{"file": "final.keras"}'}, no_index).export == {
        "file": "final.keras"}
    assert choose("j", "best", {}, no_index).export == {}  # none yet: load_export says so, the fallback may serve
    with pytest.raises(ValueError, match="expected 'best' or 'final'"):
        choose("j", "latest", {"latest_checkpoint": rec}, no_index)


def test_fallback_is_the_best_epochs_checkpoint_or_the_newest() -> None:
    index = {ckpt_key(1, 0): {"e": 1}, ckpt_key(2, 0): {"e": 2}, ckpt_key(3, 4): {"e": 3}}
    assert fallback("best", {"best_ckpt_key": str(ckpt_key(1, 0))}, index) == {"e": 1}
    assert fallback("best", {"best_ckpt_key": str(ckpt_key(9, 0))}, index) is None
    assert fallback("best", {}, index) == {"e": 3}
    assert fallback("final", {"best_ckpt_key": str(ckpt_key(1, 0))}, index) == {"e": 3}
    assert fallback("final", {}, {}) is None
