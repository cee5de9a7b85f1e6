"""The attempt ledger's typed writes and its fencing, on the in-memory ledger (no redis-server)."""

from __future__ import annotations

import pytest

from jobs.contract.states import JobState
from jobs.errors import FencedError
from worker.ledger import AttemptRecord, EpochRecord, MemoryLedger, Progress


def test_epoch_end_writes_history_fields_and_events_in_one_write() -> None:
    led = MemoryLedger()
    rec = EpochRecord(2, {"loss": 0.5}, {"epoch": 2, "loss": 0.5, "time_s": 0.1},
                      events=[{"kind": "epoch", "msg": "epoch 2", "level": "info"}], best_value=0.5, improved=True,
                      stopped_early=True)
    led.epoch_end(rec)
    assert led.writes == 1
    assert led.history() == [{"epoch": 2, "loss": 0.5, "time_s": 0.1}]
    assert led.fields == {"epoch": 2, "metrics": {"loss": 0.5}, "batch": 0, "best_epoch": 2, "best_value": 0.5,
                          "stopped_early": True}
    assert [e["msg"] for e in led.events()] == ["epoch 2"]


def test_epoch_without_improvement_leaves_best_alone() -> None:
    led = MemoryLedger(fields={"best_epoch": 1, "best_value": 0.3})
    led.epoch_end(EpochRecord(2, {"loss": 0.5}, {"epoch": 2}))
    assert led.fields["best_epoch"] == 1 and "stopped_early" not in led.fields


def test_progress_and_checkpoint_commit() -> None:
    led = MemoryLedger()
    led.progress(Progress(3, 10, 2, {"loss": 1.0}))
    assert led.fields == {"batch": 3, "steps": 10, "running_epoch": 2, "batch_metrics": {"loss": 1.0}}
    led.commit_checkpoint({"key": 1000000, "file": "a"}, fields={"best_ckpt_key": 1000000})
    led.commit_checkpoint({"key": 2000000, "file": "b"}, delete=[1000000])
    assert list(led.checkpoints()) == [2000000] and led.fields["best_ckpt_key"] == 1000000


def test_begin_drops_redone_history_and_stale_checkpoints() -> None:
    led = MemoryLedger()
    led.write(history_set={1: {"epoch": 1}, 2: {"epoch": 2}}, ckpt_set={1000000: {"key": 1000000},
                                                                       2000000: {"key": 2000000}})
    led.begin({"epoch": 1, "preempt_key": None}, history_del=[2], ckpt_del=[2000000], events=[])
    assert [h["epoch"] for h in led.history()] == [1] and list(led.checkpoints()) == [1000000]
    assert led.fields == {"epoch": 1}  # None deletes a field, as in Redis


def test_every_write_is_fenced_once_the_lease_is_lost() -> None:
    led = MemoryLedger()
    led.lose_lease()
    for write in (lambda: led.note("x"), lambda: led.progress(Progress(1, 2, 1)),
                  lambda: led.commit_checkpoint({"key": 1}), lambda: led.end(JobState.SUCCEEDED, "done")):
        with pytest.raises(FencedError):
            write()
    assert led.renew(1000) == (False, False)
    assert led.writes == 0 and led.final is None


def test_nothing_is_written_after_the_final_transition() -> None:
    led = MemoryLedger()
    led.end(JobState.SUCCEEDED, "training finished", fields={"final_checkpoint": {"file": "final.keras"}})
    with pytest.raises(FencedError):
        led.note("late")
    assert led.final is not None and led.final[0] is JobState.SUCCEEDED


def test_attempt_record_parses_redis_strings_once() -> None:
    rec = AttemptRecord.parse({"queue": "default", "worker": "w1", "preemptions": "2", "best_ckpt_key": "3000000",
                               "preempt_key": "None", "spec": "{}", "other": "ignored"})
    assert (rec.queue, rec.worker, rec.preemptions, rec.best_ckpt_key, rec.preempt_key) == (
        "default", "w1", 2, 3000000, None)


@pytest.mark.parametrize("bad", ["", "None", "garbage", None])
def test_attempt_record_treats_unreadable_hints_as_absent(bad: object) -> None:
    rec = AttemptRecord.parse({"best_ckpt_key": bad, "preempt_key": bad, "preemptions": bad})
    assert (rec.best_ckpt_key, rec.preempt_key, rec.preemptions) == (None, None, 0)


def test_claim_starts_the_attempt_under_its_token() -> None:
    led = MemoryLedger(attempt=2, token="t2")
    led.claim("w1", lease_ttl_ms=30_000)
    assert {k: led.fields[k] for k in ("state", "token", "worker", "attempt")} == {
        "state": "running", "token": "t2", "worker": "w1", "attempt": 2}
    assert led.renew(30_000) == (True, False)
    led.cancel_requested = True
    assert led.renew(30_000) == (True, True)
