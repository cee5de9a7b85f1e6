"""The progress watchdog of a running attempt: a thread that notices when batches stop finishing, and acts.

Training runs on the worker's main thread; a hang there (a deadlocked data loader, a stuck collective, a wedged
driver call) cannot be interrupted from Python, and the lease heartbeat, a thread of its own, keeps beating. So the
watchdog is a separate thread fed by a Keras callback (every finished training or validation batch is a sign of
life, see :class:`worker.watchdog_policy.ProgressClock`). On a hang it

1. dumps every thread's stack (:func:`dump_stacks`, faulthandler: works while the main thread holds the GIL in C),
2. calls ``on_hang(hang, stacks)``: the attempt records a ``hung`` event naming epoch and batch, with the stacks,
   and hands the job back to the queue at once,
3. replaces the process (:func:`replace_process`): ``execv`` of the worker's own command line, same pid, a fresh
   interpreter, every thread of the hung one gone. No parent process is needed (``traind up``, docker, systemd and a
   bare shell all keep working) and the worker comes back warm in seconds. A thread stuck in the kernel
   (uninterruptible sleep) can delay even that; the supervisor's own progress check is the defence behind it.

>>> # wd = Watchdog(WatchdogConfig(), on_hang=hand_back); wd.start(); model.fit(..., callbacks=[wd.callback()])
>>> # wd.stop()
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from worker.watchdog_policy import Hang, ProgressClock, WatchdogConfig

log = logging.getLogger("traind.worker")

MAX_DUMP_CHARS = 32_000  # kept in the job's event (the log gets all of it)


def dump_stacks() -> str:
    """Every thread's Python stack, as faulthandler writes it (it needs no lock the hung thread may hold)."""
    with tempfile.TemporaryFile(mode="w+") as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        return f.read()


def replace_process(argv: list[str] | None = None) -> NoReturn:
    """Replace this process with a fresh one running the same command line (``sys.orig_argv``), same pid."""
    argv = list(argv or getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    log.error("replacing the worker process: %s", " ".join(argv))
    logging.shutdown()  # flush handlers; execv keeps no Python buffers
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed stream must not stop the replacement
        pass
    try:
        os.execv(sys.executable, [sys.executable, *argv[1:]])
    finally:
        os._exit(70)  # execv failed: exit (EX_SOFTWARE); a process manager restarts the worker


class Watchdog:
    """Watches one attempt (see the module doc). ``clock`` is injectable: tests drive :meth:`step` themselves."""

    def __init__(self, config: WatchdogConfig, on_hang: Callable[[Hang, str], None], *,
                 clock: Callable[[], float] = time.monotonic, poll_s: float = 1.0,
                 replace: Callable[[], Any] = replace_process,
                 publish: Callable[[dict[str, Any]], None] | None = None, publish_every_s: float = 10.0,
                 enabled: bool = True) -> None:
        self.enabled = enabled  # False: the signs of life are published, nothing watches them here
        self.config, self.on_hang, self.clock, self.poll_s, self.replace = config, on_hang, clock, poll_s, replace
        self._lock = threading.Lock()
        self.progress = ProgressClock(config, now=clock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: Hang | None = None
        self.paused = False  # between fit calls and after training (exports): not watched
        # Signs of life for the supervisor's own check (daemon/progress_watch.py), throttled: a counter that moves
        # with every batch (validation too) and the current timeout.
        self.publish, self.publish_every_s = publish, publish_every_s
        self.seq = 0
        self._published = -float("inf")

    # -- signs of life (from the training thread) ----------------------------------------------------------------
    def batch(self, epoch: int, batch: int, kind: str = "train") -> None:
        now = self.clock()
        with self._lock:
            self.progress.batch(now=now, epoch=epoch, batch=batch, kind=kind)
            self.seq += 1
            timeout = self.progress.timeout_s()
        # Often enough that the supervisor's allowance (>= 2 x the timeout) always sees the counter move.
        if self.publish is not None and now - self._published >= min(self.publish_every_s, timeout / 4):
            self._published = now
            self.publish({"progress_seq": self.seq, "progress_timeout_s": round(timeout, 1)})

    def expect(self, kind: str) -> None:
        with self._lock:
            self.progress.expect(kind, now=self.clock())

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        with self._lock:
            self.paused = False
            self.progress.expect("train", now=self.clock())

    def timeout_s(self) -> float:
        with self._lock:
            return self.progress.timeout_s()

    def callback(self, batch_offset: int = 0) -> Any:
        """The Keras callback that feeds the watchdog (``batch_offset``: batches of the first epoch done earlier)."""
        import keras

        wd = self

        class WatchdogCallback(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.epoch, self.done, self.offset = 0, 0, batch_offset

            def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
                wd.resume()

            def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
                wd.pause()

            def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                self.epoch, self.done, self.offset = epoch, self.offset, 0
                wd.expect("train")

            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                self.done += 1
                wd.batch(self.epoch + 1, self.done)

            def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
                wd.expect("test")

            def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                wd.batch(self.epoch + 1, self.done, kind="test")

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                wd.expect("train")  # the epoch-end work (history, checkpoint) was a sign of life

        return WatchdogCallback()

    # -- the thread ----------------------------------------------------------------------------------------------
    def step(self, now: float | None = None) -> Hang | None:
        """One check: on a hang, dump the stacks, call ``on_hang`` and replace the process (once)."""
        with self._lock:
            hang = None if self.paused else self.progress.check(now=self.clock() if now is None else now)
        if hang is None or self.fired is not None:
            return None
        self.fired = hang
        stacks = dump_stacks()
        log.error("attempt hung at epoch %d batch %d: %s\n%s", hang.epoch, hang.batch, hang.reason, stacks)
        try:
            self.on_hang(hang, stacks[-MAX_DUMP_CHARS:])
        except Exception:  # the process is replaced anyway; the supervisor requeues the job when it could not be
            log.exception("hung attempt: handing the job back failed")
        self.replace()
        return hang

    def start(self) -> Watchdog:
        if not self.enabled:
            return self
        self._thread = threading.Thread(target=self._run, name="traind-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.step() is not None:
                return

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
