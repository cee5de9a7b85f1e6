"""Checkpoint policies as small pure objects (as Orbax keeps ``SaveDecisionPolicy`` and ``PreservationPolicy``):
:class:`SavePolicy` says when to save, :class:`KeepPolicy` what to keep.

>>> p = SavePolicy(save_freq=4, every_s=None, step_checkpoints=True, wait_always=False)
>>> p.step_due(batches_done=8, steps=15, last_save_s=0.0, now_s=1.0), p.must_save(EpochFacts(2, 10))
(True, False)
>>> KeepPolicy(keep_last=1).victims({1000000: {}, 2000000: {}, 3000000: {}}, best_key=1000000, newest_key=3000000)
[2000000]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.storage import ckpt_format as fmt
from worker.ckpt_interval import IntervalPolicy


@dataclass(frozen=True)
class EpochFacts:
    """What an epoch end's save decision depends on: 1-based ``epoch`` of ``epochs``, whether the checkpoint
    monitor improved, whether training stops after it (early stopping) and whether a stop (cancel, preemption) is
    pending."""

    epoch: int
    epochs: int
    improved: bool = False
    stopping: bool = False
    stop_requested: bool = False


@dataclass(frozen=True)
class SavePolicy:
    """When to save: every epoch end (under backpressure, see :meth:`must_save`), every ``save_freq`` batches or
    ``every_s`` seconds (step checkpoints, when ``step_checkpoints`` is on for this job's data), and always before
    a requested stop."""

    save_freq: int | str = "epoch"
    every_s: float | None = None
    step_checkpoints: bool = False
    wait_always: bool = True  # TRAIND_CHECKPOINT_BACKPRESSURE=wait: no epoch end is ever skipped
    interval: IntervalPolicy | None = None  # every_s "auto": Young/Daly from the measured stall (mutable inside)

    def must_save(self, f: EpochFacts) -> bool:
        """Whether this epoch end's checkpoint waits for a write still running instead of being skipped: the best
        epoch, the last one, an early stop and a requested stop are never skipped (see Checkpoints.offer)."""
        return f.improved or f.stopping or f.epoch >= f.epochs or f.stop_requested or self.wait_always

    def step_due(self, batches_done: int, steps: int | None, last_save_s: float, now_s: float) -> bool:
        """Whether a step checkpoint is due after ``batches_done`` batches of an epoch of ``steps`` batches."""
        every = self.every_s if self.every_s is not None or self.interval is None else self.interval.interval_s()
        return self.step_checkpoints and step_due(self.save_freq, every, batches_done, steps, last_save_s, now_s)

    def observe_stall(self, stall_s: float) -> None:
        """A checkpoint held the training thread ``stall_s`` seconds (the automatic interval follows it)."""
        if self.interval is not None:
            self.interval.observe_stall(stall_s)


def step_due(save_freq: int | str, every_s: float | None, batches_done: int, steps: int | None, last_save_s: float,
             now_s: float) -> bool:
    """Whether a step checkpoint is due after ``batches_done`` batches of an epoch of ``steps`` batches.

    Never on an epoch's last batch (the epoch-end checkpoint follows at once).

    >>> step_due(4, None, 8, 15, 0.0, 1.0), step_due(4, None, 7, 15, 0.0, 1.0), step_due("epoch", 2.0, 3, 15, 0.0, 2.5)
    (True, False, True)
    """
    if steps is not None and batches_done >= steps:
        return False
    if isinstance(save_freq, int) and batches_done % save_freq == 0:
        return True
    return every_s is not None and now_s - last_save_s >= every_s


@dataclass(frozen=True)
class KeepPolicy:
    """What to keep: the last ``keep_last`` epoch-end checkpoints, the best one and the newest one."""

    keep_last: int = 1

    def victims(self, index: dict[int, Any], best_key: int | None, newest_key: int) -> list[int]:
        return retention_victims(index, self.keep_last, best_key, newest_key)


def retention_victims(index: dict[int, dict[str, Any]], keep_last: int, best_key: int | None,
                      newest_key: int) -> list[int]:
    """Index keys to delete: all but the last ``keep_last`` epoch-end checkpoints and the best one.

    >>> retention_victims({1000000: {}, 2000000: {}, 3000000: {}}, 1, 1000000, 3000000)
    [2000000]
    """
    ends = sorted(k for k in index if fmt.is_epoch_end(k) and k <= newest_key)
    keep = set(ends[-keep_last:]) | {newest_key}
    if best_key is not None:
        keep.add(best_key)
    # A mid-epoch (preemption) checkpoint is obsolete once a later epoch-end checkpoint exists.
    return [k for k in index if k not in keep and k <= newest_key]
