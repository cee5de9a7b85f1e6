"""The watchdog thread: a hang is noticed, every thread's stack is dumped, the job handed back, the process replaced."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from worker.watchdog import Watchdog, dump_stacks
from worker.watchdog_policy import Hang, WatchdogConfig


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_step_fires_once_with_the_stacks_and_replaces_the_process() -> None:
    clock, seen, replaced = FakeClock(), [], []
    wd = Watchdog(WatchdogConfig(floor_s=10.0, first_batch_s=30.0), lambda h, s: seen.append((h, s)), clock=clock,
                  replace=lambda: replaced.append(True))
    clock.t = 29.0
    assert wd.step() is None
    wd.batch(1, 1)
    wd.batch(1, 2)
    clock.t = 38.5
    assert wd.step() is None and not seen
    clock.t = 39.5
    hang = wd.step()
    assert isinstance(hang, Hang) and (hang.epoch, hang.batch) == (1, 2)
    assert len(seen) == 1 and seen[0][0] == hang and "test_step_fires_once" in seen[0][1]
    assert replaced == [True]
    clock.t = 100.0
    assert wd.step() is None and len(seen) == 1  # once


def test_the_thread_notices_a_blocked_training_thread(tmp_path: Path) -> None:
    """A real thread blocked for good (as a deadlocked loader): the watchdog thread fires on its own."""
    blocked, fired = threading.Event(), threading.Event()
    got: list[str] = []

    def train() -> None:
        blocked.wait()  # never set before the watchdog fires

    t = threading.Thread(target=train, name="fake-training", daemon=True)
    t.start()
    wd = Watchdog(WatchdogConfig(timeout_s=0.3), lambda h, s: got.append(s), poll_s=0.05,
                  replace=fired.set)
    with wd:
        assert fired.wait(timeout=30)
    blocked.set()
    assert "fake-training" in got[0] or "in train" in got[0]


def test_dump_stacks_shows_every_thread() -> None:
    ev = threading.Event()
    t = threading.Thread(target=ev.wait, name="waiter", daemon=True)
    t.start()
    try:
        out = dump_stacks()
    finally:
        ev.set()
    assert out.count("hread 0x") >= 2 and "wait" in out  # "Current thread 0x..." and "Thread 0x..."


def test_replace_process_execs_the_same_command_line(tmp_path: Path) -> None:
    script = tmp_path / "again.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from worker.watchdog import replace_process
        n = int(os.environ.get("ROUND", "0"))
        print(f"round {{n}} pid {{os.getpid()}}", flush=True)
        if n < 1:
            os.environ["ROUND"] = str(n + 1)
            replace_process()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ROUND": "0"})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("round")]
    assert [ln.split()[1] for ln in lines] == ["0", "1"]
    assert lines[0].split()[3] == lines[1].split()[3]  # same pid: replaced in place
