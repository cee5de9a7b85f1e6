"""A retried attempt that finds no committed checkpoint says so loudly (never quietly starts over)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.storage.factory import open_storage
from worker.checkpoint import Checkpoints
from worker.ledger import MemoryLedger


def _select(tmp_path: Path, attempt: int) -> tuple[Any, list[dict[str, Any]]]:
    ck = Checkpoints(open_storage(str(tmp_path)), MemoryLedger("job1", attempt, "tok"))
    try:
        return ck.select({}, "latest", None, None)
    finally:
        ck.close()


def test_first_attempt_starts_quietly(tmp_path: Path) -> None:
    assert _select(tmp_path, 1) == (None, [])


def test_retried_attempt_without_a_committed_checkpoint_warns(tmp_path: Path) -> None:
    restored, events = _select(tmp_path, 3)
    assert restored is None
    assert [(e["level"], e["msg"]) for e in events] == [
        ("warning", f"attempt 3: no committed checkpoint in {tmp_path} to resume from; starting over from epoch 1")]
