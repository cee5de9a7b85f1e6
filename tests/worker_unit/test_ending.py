"""The end of an attempt has one owner: Ending writes the first outcome it is given, once (no redis-server)."""

from __future__ import annotations

import logging

import pytest

from jobs.contract.states import JobState
from testkit.cluster import wait_for
from worker.control import JobControl, StopReason
from worker.ending import Ending, Outcome
from worker.heartbeat import Heartbeat
from worker.ledger import MemoryLedger


def _ending(led: MemoryLedger, calls: list[str] | None = None, preemptions: int = 0) -> Ending:
    def stop_heartbeat() -> None:
        assert led.final is None, "the heartbeat stops before the job is finished"
        (calls if calls is not None else []).append("heartbeat stopped")

    return Ending(led, worker_id="w1", queue="default", preemptions=preemptions, before_success=stop_heartbeat)


def test_success_is_recorded_once_after_the_heartbeat_stopped() -> None:
    led, calls = MemoryLedger(), []
    end = _ending(led, calls)
    end.record(Outcome(None, {"final_checkpoint": {"file": "final.keras"}}, "training finished", epochs_done=3))
    end.record(Outcome(None, {}, "again"))  # fit returned after on_train_end had finished the job
    end.fail("failed: late error", error="late")
    assert calls == ["heartbeat stopped"]
    assert led.final == (JobState.SUCCEEDED, "training finished", {"final_checkpoint": {"file": "final.keras"}})
    assert end.ended and end.outcome is not None and end.outcome.epochs_done == 3


def test_cancel_and_failure() -> None:
    led = MemoryLedger()
    _ending(led).record(Outcome(StopReason.CANCEL, {}, "cancelled after epoch 2; checkpoints kept"))
    assert led.final == (JobState.CANCELLED, "cancelled after epoch 2; checkpoints kept", {})

    led = MemoryLedger()
    _ending(led).fail("failed: boom", error="boom", traceback="tb")
    assert led.final == (JobState.FAILED, "failed: boom", {"error": "boom", "traceback": "tb"})


@pytest.mark.parametrize("key", [None, 2000005])
def test_preemption_requeues_with_its_checkpoint(key: int | None) -> None:
    led = MemoryLedger(attempt=2)
    _ending(led, preemptions=1).record(Outcome(StopReason.PREEMPT, {}, "preempted", preempt_key=key))
    assert led.final is None and led.requeued is not None
    queue, msg, fields = led.requeued
    assert queue == "default" and msg == "preempted on worker w1; requeued as attempt 3"
    expected = {"preemptions": 2, "reason": "preempted on worker w1", "preempt_requested": None,
                "preempt_requested_at": None}  # a supervisor's request (if any) is cleared with the requeue
    assert fields == (expected if key is None else {**expected, "preempt_key": key})
    assert led.requeued_extra is None


def test_a_supervisor_preemption_names_the_job_it_was_for() -> None:
    led, control = MemoryLedger(attempt=1), JobControl()
    control.request_preempt("hi-job")
    control.request_preempt("other")  # the first request wins
    assert control.reason is StopReason.PREEMPT and control.preempted_for == "hi-job"
    end = Ending(led, worker_id="w1", queue="default", preemptions=0, control=control)
    end.record(Outcome(StopReason.PREEMPT, {}, "preempted", preempt_key=1000003))
    assert led.requeued is not None
    _, msg, fields = led.requeued
    assert msg == "preempted for job hi-job on worker w1; requeued as attempt 2"
    assert fields["preempted_for"] == "hi-job" and fields["reason"] == "preempted for job hi-job on worker w1"
    assert led.requeued_extra == {"by": "hi-job"}


def test_the_heartbeat_turns_a_preemption_flag_into_a_preempt_stop() -> None:
    led, control = MemoryLedger(), JobControl()
    led.preempt_for = "hi-job"
    hb = Heartbeat(led, control, ttl_s=5.0, interval_s=0.01)
    with hb:
        wait_for(lambda: control.reason is not None, 5, "the heartbeat to see the flag")
    assert (control.reason, control.preempted_for) == (StopReason.PREEMPT, "hi-job")
    led2, control2 = MemoryLedger(), JobControl()
    led2.cancel_requested, led2.preempt_for = True, "hi-job"
    with Heartbeat(led2, control2, ttl_s=5.0, interval_s=0.01):
        wait_for(lambda: control2.reason is not None, 5, "the heartbeat to see the flags")
    assert control2.reason is StopReason.CANCEL and control2.preempted_for is None  # a cancel wins: no requeue


def test_a_fenced_attempt_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    led = MemoryLedger()
    end = _ending(led)
    with caplog.at_level(logging.WARNING, "traind.worker"):
        end.record(Outcome(StopReason.FENCED, {}, "lease lost"))
    assert led.final is None and led.requeued is None and led.writes == 0
    assert "fenced off" in caplog.text


def test_a_refused_final_transition_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    led = MemoryLedger()
    led.lose_lease()
    with caplog.at_level(logging.WARNING, "traind.worker"):
        _ending(led).record(Outcome(StopReason.CANCEL, {}, "cancelled"))
    assert led.final is None and "final state cancelled not recorded" in caplog.text
