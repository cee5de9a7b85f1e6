"""Pure policies: the default step-checkpoint interval (Young/Daly) and the progress watchdog's decision."""

from __future__ import annotations

import math

import pytest

from worker.ckpt_interval import IntervalPolicy, young_daly_s
from worker.watchdog_policy import ProgressClock, WatchdogConfig


def test_young_daly_formula() -> None:
    assert young_daly_s(0.02, 3600.0) == pytest.approx(math.sqrt(2 * 0.02 * 3600))
    assert young_daly_s(0.0, 3600.0) == 0.0


def test_interval_starts_at_the_floor_then_follows_the_measured_stall() -> None:
    p = IntervalPolicy(mtbf_s=3600.0, min_s=5.0, max_s=600.0)
    assert p.interval_s() == 5.0 and p.expected_overhead() is None
    p.observe_stall(0.001)  # sqrt(2 x 0.001 x 3600) = 2.7 s: below the floor
    assert p.interval_s() == 5.0
    p.observe_stall(0.05)
    p.observe_stall(0.05)  # the median of 1 ms, 50 ms, 50 ms
    assert p.interval_s() == pytest.approx(math.sqrt(2 * 0.05 * 3600))
    assert p.expected_overhead() == pytest.approx(0.05 / p.interval_s())


def test_interval_keeps_the_overhead_under_one_percent_and_is_capped() -> None:
    p = IntervalPolicy(mtbf_s=60.0, min_s=1.0, max_s=600.0)
    p.observe_stall(2.0)  # Young/Daly: 15.5 s, i.e. 13 % overhead; 1 % needs 200 s
    assert p.interval_s() == pytest.approx(200.0)
    p.observe_stall(10.0)
    p.observe_stall(10.0)
    assert p.interval_s() == 600.0


def test_the_median_recent_stall_counts_and_old_ones_are_forgotten() -> None:
    p = IntervalPolicy(mtbf_s=3600.0, min_s=1.0, max_s=600.0, window=3)
    for s in (0.02, 0.5, 0.01):  # one slow checkpoint (the first traces the save functions) does not count alone
        p.observe_stall(s)
    assert p.stall_s == 0.02
    for s in (1.0, 1.0):
        p.observe_stall(s)
    assert p.stall_s == 1.0  # the window keeps the last 3: 0.01, 1.0, 1.0
    p.observe_stall(float("nan"))
    p.observe_stall(-1.0)
    assert p.stall_s == 1.0  # not measurements: ignored


def test_due_and_bad_bounds() -> None:
    p = IntervalPolicy(min_s=5.0)
    assert not p.due(100.0, 104.9) and p.due(100.0, 105.0)
    with pytest.raises(ValueError):
        IntervalPolicy(min_s=10.0, max_s=5.0)
    with pytest.raises(ValueError):
        IntervalPolicy(mtbf_s=0.0)


def test_watchdog_first_batch_allowance_then_derived_timeout() -> None:
    clock = ProgressClock(WatchdogConfig(factor=20.0, floor_s=60.0, first_batch_s=600.0), now=0.0)
    assert clock.timeout_s() == 600.0
    assert clock.check(now=600.0) is None
    hang = clock.check(now=600.5)
    assert hang is not None and (hang.epoch, hang.batch) == (0, 0) and "first batch" in hang.reason
    t = 0.0
    for b in range(1, 101):  # 2 s batches: 20 x p95 = 40 s < the 60 s floor
        t += 2.0
        clock.batch(now=t, epoch=1, batch=b)
    assert clock.timeout_s() == 60.0
    for b in range(101, 301):  # slower, 5 s batches: 100 s
        t += 5.0
        clock.batch(now=t, epoch=1, batch=b)
    assert clock.timeout_s() == pytest.approx(100.0)
    assert clock.check(now=t + 100.0) is None
    hang = clock.check(now=t + 101.0)
    assert hang is not None and (hang.epoch, hang.batch) == (1, 300) and hang.timeout_s == pytest.approx(100.0)


def test_watchdog_validation_gets_its_own_first_batch_allowance() -> None:
    clock = ProgressClock(WatchdogConfig(factor=5.0, floor_s=10.0, first_batch_s=300.0), now=0.0)
    clock.batch(now=1.0, epoch=1, batch=1)
    clock.batch(now=2.0, epoch=1, batch=2)
    clock.expect("test", now=2.0)  # validation starts: its first batch compiles the test step
    assert clock.timeout_s() == 300.0 and clock.check(now=200.0) is None
    clock.batch(now=200.0, epoch=1, batch=2, kind="test")
    clock.expect("train", now=201.0)  # epoch 2 starts: training batches were seen already
    assert clock.timeout_s() == 10.0
    hang = clock.check(now=212.0)
    assert hang is not None and (hang.epoch, hang.batch) == (1, 2)


def test_watchdog_explicit_timeout_wins_and_bad_settings_are_refused() -> None:
    clock = ProgressClock(WatchdogConfig(timeout_s=5.0), now=0.0)
    assert clock.timeout_s() == 5.0 and clock.check(now=5.5) is not None
    with pytest.raises(ValueError):
        WatchdogConfig(timeout_s=0.0)
    with pytest.raises(ValueError):
        WatchdogConfig(factor=1.0)
