"""Checkpoint policies: when to save (SavePolicy) and what to keep (KeepPolicy); pure, no redis-server."""

from __future__ import annotations

import pytest

from jobs.storage.ckpt_format import ckpt_key
from worker.policy import EpochFacts, KeepPolicy, SavePolicy, step_due


@pytest.mark.parametrize(("facts", "must"), [
    (EpochFacts(2, 10), False),
    (EpochFacts(2, 10, improved=True), True),
    (EpochFacts(2, 10, stopping=True), True),
    (EpochFacts(10, 10), True),
    (EpochFacts(2, 10, stop_requested=True), True),
])
def test_skip_backpressure_never_skips_the_best_last_or_a_stop(facts: EpochFacts, must: bool) -> None:
    assert SavePolicy(wait_always=False).must_save(facts) is must
    assert SavePolicy(wait_always=True).must_save(facts) is True  # the default: every epoch end waits


def test_step_checkpoints_every_n_batches_or_seconds_never_on_the_last_batch() -> None:
    every4 = SavePolicy(save_freq=4, step_checkpoints=True)
    assert [b for b in range(1, 16) if every4.step_due(b, 15, 0.0, 0.0)] == [4, 8, 12]
    timed = SavePolicy(every_s=2.0, step_checkpoints=True)
    assert timed.step_due(3, 15, last_save_s=10.0, now_s=12.0) and not timed.step_due(3, 15, 10.0, 11.9)
    assert not timed.step_due(15, 15, 0.0, 100.0)
    assert not SavePolicy(save_freq=4, every_s=1.0, step_checkpoints=False).step_due(4, 15, 0.0, 100.0)
    assert step_due(4, None, 4, None, 0.0, 0.0)  # unknown epoch length (a Dataset)


def test_keep_last_epoch_ends_and_the_best() -> None:
    index = {ckpt_key(e, 0): {} for e in range(1, 6)}
    assert KeepPolicy(2).victims(index, best_key=ckpt_key(1, 0), newest_key=ckpt_key(5, 0)) == [
        ckpt_key(2, 0), ckpt_key(3, 0)]
    assert KeepPolicy(1).victims(index, best_key=None, newest_key=ckpt_key(5, 0)) == [
        ckpt_key(e, 0) for e in range(1, 5)]


def test_a_mid_epoch_checkpoint_is_obsolete_after_a_later_epoch_end_and_newer_ones_are_untouched() -> None:
    index = {ckpt_key(1, 0): {}, ckpt_key(1, 7): {}, ckpt_key(2, 0): {}, ckpt_key(2, 3): {}}
    # committing epoch 2's end: the preemption checkpoint inside epoch 2 goes; the step one after it is newer
    assert KeepPolicy(1).victims(index, best_key=ckpt_key(1, 0), newest_key=ckpt_key(2, 0)) == [ckpt_key(1, 7)]
    # the newest (a step checkpoint) is always kept, with the last epoch end
    assert KeepPolicy(1).victims(index, best_key=None, newest_key=ckpt_key(2, 3)) == [ckpt_key(1, 0),
                                                                                     ckpt_key(1, 7)]
