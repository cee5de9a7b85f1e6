"""Where an attempt starts: the checkpoint it resumes from, and the record reset to that point.

Epochs after the resume point will be redone: their history entries and checkpoints are dropped in the same fenced
write that records the attempt's start (and its ``training`` event).

>>> # point = resume(ledger, ckpts, spec, AttemptRecord.parse(raw), steps=15, apply=trainer.restore)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.contract.events import EventKind, event
from jobs.contract.spec import JobSpec
from jobs.storage.ckpt_format import ckpt_key
from worker.checkpoint import Checkpoints, Restored
from worker.ledger import AttemptLedger, AttemptRecord


@dataclass
class ResumePoint:
    """Training continues in 0-based epoch ``epoch`` after ``batch`` of its batches (0: at its start)."""

    epoch: int
    batch: int
    restored: Restored | None = None
    index: dict[int, dict[str, Any]] | None = None  # the checkpoint index before stale entries were dropped

    @property
    def metric_vars(self) -> list[np.ndarray] | None:
        return None if self.restored is None else self.restored.metric_vars


def resume(ledger: AttemptLedger, ckpts: Checkpoints, spec: JobSpec, rec: AttemptRecord, steps: int | None,
           apply: Callable[[Restored], None]) -> ResumePoint:
    """Choose and load the checkpoint to resume from (``apply`` puts it into the model and callbacks), record the
    attempt's start and drop what will be redone."""
    index = ledger.checkpoints()
    ckpts.clear_incomplete()
    # Step checkpoints exist to lose at most their interval: by default a crashed attempt resumes from the newest one.
    policy = spec.resume_policy
    restored, events = ckpts.select(index, policy, rec.best_ckpt_key, rec.preempt_key)
    point = ResumePoint(spec.fit.initial_epoch, 0, restored, index)
    if restored is not None:
        apply(restored)
        point.epoch, point.batch = restored.manifest["epoch"], restored.manifest["batch"]
    resume_key = ckpt_key(point.epoch, point.batch)
    hist_del = [h["epoch"] for h in ledger.history() if h["epoch"] > point.epoch]
    stale = [k for k in index if k > resume_key or restored is None]
    fields: dict[str, Any] = {"epoch": point.epoch, "resume_epoch": point.epoch, "preempt_key": None,
                              "batch": point.batch, "steps": steps or 0}
    if restored is None:
        fields.update({"best_epoch": None, "best_value": None, "best_ckpt_key": None})
    start, batch = point.epoch, point.batch
    events.append(event(EventKind.TRAINING, f"attempt {ledger.attempt} training on worker {rec.worker} from "
                        f"epoch {start + 1}/{spec.fit.epochs}" + (f" batch {batch + 1}/{steps}" if batch else ""),
                        attempt=ledger.attempt, worker=rec.worker, epoch=start + 1, batch=batch + 1 if batch else 0))
    ledger.begin(fields, history_del=hist_del, ckpt_del=stale, events=events)
    ckpts.delete_files([index[k] for k in stale])
    return point
