"""The lease heartbeat: a thread that renews the job's lease while TensorFlow computes (ops release the GIL)."""

from __future__ import annotations

import logging
import threading

from jobs.redis.store import JobStore
from worker.control import JobControl, StopReason

log = logging.getLogger("traind.worker")


class Heartbeat(threading.Thread):
    """Renews ``job_id``'s lease every ``interval_s``; flags cancel / fencing on the job's :class:`JobControl`."""

    def __init__(self, store: JobStore, job_id: str, token: str, control: JobControl, ttl_s: float,
                 interval_s: float, on_beat: object = None) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id, self.token, self.control = store, job_id, token, control
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self.on_beat = on_beat
        self._stop_evt = threading.Event()
        self.beats = 0

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                owner, cancel = self.store.heartbeat(self.job_id, self.token, self.ttl_ms)
                self.beats += 1
                if not owner:
                    log.warning("job %s: lease lost (requeued elsewhere); abandoning", self.job_id)
                    self.control.request(StopReason.FENCED)
                    return
                if cancel:
                    self.control.request(StopReason.CANCEL)
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
