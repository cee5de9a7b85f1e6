"""Goodput accounting over a fake job record's events: every part, and the parts summing to the wall time."""

from __future__ import annotations

import pytest

from jobs.goodput import Goodput, account, fleet


def parts_sum(g: Goodput) -> float:
    return g.queued_s + g.starting_s + g.productive_s + g.checkpoint_s + g.redone_s + g.detection_s + g.restart_s


def test_no_failure() -> None:
    evs = [{"kind": "submitted", "ts": 1_000}, {"kind": "claimed", "ts": 3_000}, {"kind": "training", "ts": 7_000},
           {"kind": "epoch", "ts": 20_000, "epoch": 1}, {"kind": "succeeded", "ts": 31_000}]
    g = account(evs, stall_s=0.4)
    assert (g.wall_s, g.queued_s, g.starting_s, g.checkpoint_s) == (30.0, 2.0, 4.0, 0.4)
    assert g.productive_s == pytest.approx(23.6) and g.redone_s == g.detection_s == g.restart_s == 0
    assert parts_sum(g) == pytest.approx(g.wall_s) and g.ratio == pytest.approx(23.6 / 30)


def test_a_kill_a_hang_and_a_preemption() -> None:
    evs = [
        {"kind": "submitted", "ts": 0}, {"kind": "claimed", "ts": 500}, {"kind": "training", "ts": 2_000},
        # SIGKILL at 40 s: the lease (TTL 5 s) expired, the supervisor requeued at 46 s; last step checkpoint at 33 s
        {"kind": "requeued", "ts": 46_000, "lost_at_ms": 40_000}, {"kind": "claimed", "ts": 47_000},
        {"kind": "resumed", "ts": 48_000, "saved_ms": 33_000}, {"kind": "training", "ts": 49_000},
        # hung at 70 s (last batch), noticed 60 s later; no checkpoint after its start: all its training is redone
        {"kind": "hung", "ts": 130_000, "silent_s": 60}, {"kind": "claimed", "ts": 131_000},
        {"kind": "resumed", "ts": 132_000, "saved_ms": 20_000}, {"kind": "training", "ts": 134_000},
        {"kind": "preempted", "ts": 150_000}, {"kind": "claimed", "ts": 151_000},
        {"kind": "resumed", "ts": 151_500, "saved_ms": 150_000}, {"kind": "training", "ts": 152_000},
        {"kind": "succeeded", "ts": 200_000},
    ]
    g = account(evs, stall_s=2.0)
    assert g.wall_s == 200.0 and g.queued_s == 0.5 and g.starting_s == 1.5
    assert g.detection_s == pytest.approx(6 + 60 + 0)
    assert g.restart_s == pytest.approx(3 + 4 + 2)
    assert g.redone_s == pytest.approx((40 - 33) + (70 - 49) + 0)
    assert g.checkpoint_s == 2.0
    assert parts_sum(g) == pytest.approx(g.wall_s)


def test_requeue_without_lost_at_uses_the_lease_ttl_and_no_checkpoint_redoes_everything() -> None:
    evs = [{"kind": "submitted", "ts": 0}, {"kind": "claimed", "ts": 0}, {"kind": "training", "ts": 1_000},
           {"kind": "requeued", "ts": 30_000}, {"kind": "claimed", "ts": 31_000},
           {"kind": "no_checkpoint", "ts": 31_500}, {"kind": "training", "ts": 32_000},
           {"kind": "succeeded", "ts": 90_000}]
    g = account(evs, lease_ttl_s=5.0)
    assert g.detection_s == 5.0 and g.redone_s == pytest.approx(24.0) and g.restart_s == 2.0
    assert parts_sum(g) == pytest.approx(90.0)


def test_running_job_uses_now_and_bad_rows_are_skipped() -> None:
    evs = [{"kind": "submitted", "ts": "0"}, {"kind": "claimed", "ts": 2_000}, {"kind": "training"},
           {"kind": "training", "ts": "x"}, {"kind": "training", "ts": 4_000}]
    g = account(evs, now_ms=10_000)
    assert (g.wall_s, g.queued_s, g.starting_s, g.productive_s) == (10.0, 2.0, 2.0, 6.0)
    assert account([]).wall_s == 0 and account([]).ratio == 0.0


def test_lost_attempt_not_yet_resumed_counts_as_redone_and_fleet_sums() -> None:
    evs = [{"kind": "submitted", "ts": 0}, {"kind": "claimed", "ts": 0}, {"kind": "training", "ts": 0},
           {"kind": "hung", "ts": 100_000, "silent_s": 50}]
    g = account(evs, now_ms=110_000)
    assert (g.redone_s, g.detection_s, g.restart_s) == (50.0, 50.0, 10.0)
    assert parts_sum(g) == pytest.approx(110.0)
    ratio, badput = fleet([g, account([{"kind": "submitted", "ts": 0}, {"kind": "claimed", "ts": 0},
                                       {"kind": "training", "ts": 0}, {"kind": "succeeded", "ts": 90_000}])])
    assert ratio == pytest.approx(90 / 200) and badput["redone"] == 50.0 and set(badput) == {
        "queued", "starting", "checkpoint", "redone", "detection", "restart"}
