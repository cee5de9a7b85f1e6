"""The lease heartbeat: a thread that renews the job's lease while TensorFlow computes (ops release the GIL)."""

from __future__ import annotations

import logging
import threading

from worker.control import JobControl, StopReason
from worker.ledger import AttemptLedger

log = logging.getLogger("traind.worker")


class Heartbeat(threading.Thread):
    """Renews the ledger's lease every ``interval_s``; flags cancel / preemption / fencing on the job's
    :class:`JobControl`."""

    def __init__(self, ledger: AttemptLedger, control: JobControl, ttl_s: float, interval_s: float,
                 on_beat: object = None) -> None:
        super().__init__(name=f"heartbeat-{ledger.job_id}", daemon=True)
        self.ledger, self.job_id, self.control = ledger, ledger.job_id, control
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self.on_beat = on_beat
        self._stop_evt = threading.Event()
        self.beats = 0

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                beat = self.ledger.beat(self.ttl_ms)
                self.beats += 1
                if not beat.owner:
                    log.warning("job %s: lease lost (requeued elsewhere); abandoning", self.job_id)
                    self.control.request(StopReason.FENCED)
                    return
                if beat.cancel:
                    self.control.request(StopReason.CANCEL)
                if beat.preempt_for and self.control.reason is None:
                    log.warning("job %s: preempted for job %s; checkpointing at the next batch boundary and "
                                "requeueing", self.job_id, beat.preempt_for)
                    self.control.request_preempt(beat.preempt_for)
                if callable(self.on_beat):
                    self.on_beat()
            except Exception as e:  # Redis down: keep beating; the client retries with backoff
                log.warning("job %s: heartbeat failed (%s); retrying", self.job_id, type(e).__name__)
            self._stop_evt.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_evt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
