"""The worker process: a warm TensorFlow runtime that takes messages, claims jobs and trains them.

``run()`` is a thin loop over ``step()``; ``--burst`` returns when the queues are empty (tests use it).

>>> # Worker(WorkerSettings(redis_url="redis://localhost:6379/0", storage_dir="/mnt/ckpt")).run()
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import signal
import socket
import threading
import time
from typing import Any

import redis

from jobs.contract import keys
from jobs.contract.fair import FairPolicy
from jobs.contract.queue import pop
from jobs.errors import StorageError
from jobs.logfmt import native_stderr_logged
from jobs.redis import rqview
from jobs.redis.conn import connect, redact_url
from jobs.redis.delivery import reject
from jobs.redis.store import JobStore
from jobs.settings import WorkerSettings
from jobs.storage.factory import open_storage
from worker.device import configure_tensorflow, gpu_memory_mb, pin_device
from worker.distribute import device_count
from worker.keras_compat import drop_custom_gradients
from worker.versions import check_keras

log = logging.getLogger("traind.worker")
# The whole registry entry is rewritten at most this often while nothing in it changes (and at least every 2 TTLs).
REGISTRY_REFRESH_S = 10.0


class Worker:
    """Pulls from ``traind.<queue>.<device>.<priority>`` queues (high before default before low), and from the
    ``<device>-xN`` queues of jobs that need N devices for each N up to this worker's device count."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.device_kind = "gpu" if settings.device.startswith("gpu") else "cpu"
        pin_device(settings.device)  # before TensorFlow is imported anywhere in this process
        with native_stderr_logged():  # TensorFlow's C++ start-up lines: through logging (JSON), level-filtered
            import tensorflow  # noqa: F401 - warm: paid once per worker, never per job

        check_keras()  # before taking any job: safe mode's protections need a recent Keras

        self.gpus = configure_tensorflow(settings.device, settings.logical_cpus)
        _freeze_warm_heap()
        self.id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.r = connect(settings.effective_redis_url(), settings=settings)
        self.store = JobStore(self.r, events_max=settings.events_max, max_history=settings.max_history)
        self.storage = open_storage(settings.storage_dir, retry_s=settings.storage_retry_s).ensure()
        if not self.storage.is_local and settings.cache_max_bytes > 0:
            from worker.cache import UploadCache

            self.storage.cache = UploadCache(settings.cache_dir, settings.cache_max_bytes)
        try:
            self.storage.check()
        except StorageError as e:  # jobs will fail with this line; the worker still serves (storage may come back)
            log.error("%s", e)
        # resources.gpus: N jobs wait on their own queues; this worker pops those it has the devices for, most first.
        self.devices = device_count(self.device_kind)
        self.queues = keys.worker_queue_names(settings.queues, self.device_kind, self.devices)
        self.fair = FairPolicy.from_settings(settings) if settings.fair_share else None  # jobs/contract/fair.py
        self._stop = threading.Event()
        self._interrupts = 0
        self._own_signals = False  # True once run() handles SIGTERM/SIGINT itself (they then never raise)
        self.current: Any = None  # the JobControl of the running job
        self.jobs_done = 0
        self._proc: Any = None
        self._reg_state: tuple[str | None, int] | None = None  # (job, jobs done) of the last full registry write
        self._reg_next = 0.0  # time.monotonic() when the full entry is written again anyway

    # -- loop ----------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or, in burst mode, until the queues are empty)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            self._own_signals = True
        log.info("worker %s on %s (%d device(s), gpus: %s) serving %s via %s", self.id, self.settings.device,
                 self.devices, self.gpus, self.queues, redact_url(self.settings.effective_redis_url()))
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self.register()
                did = self.step()
                backoff = 0.1
            except redis.AuthenticationError as e:
                # Retrying cannot fix a wrong password or ACL: say so and exit instead of looping forever.
                log.error("Redis refused this worker's credentials (%s); check TRAIND_REDIS_URL", e)
                return 2
            except Exception as e:  # the loop survives anything: Redis outages, bad messages
                log.warning("worker loop error (%s: %s); retrying in %.1f s", type(e).__name__, e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if self.settings.burst and not did:
                break
        self.unregister()
        return 0

    def step(self) -> bool:
        """Take and handle at most one message; False when the queues were empty (or this machine is drained)."""
        if self.drained():
            self._stop.wait(self.settings.dequeue_timeout_s)
            return False
        delivery = pop(self.r, self.queues, self.settings.dequeue_timeout_s, self.fair)
        if delivery is None:
            return False
        if delivery.message is None:
            reject(self.store, delivery)
            return True
        self.execute(delivery.message.job_id, delivery.message.attempt)
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._interrupts += 1
        if signum == signal.SIGINT and self._interrupts >= 2:
            log.warning("second interrupt: exiting immediately")
            os._exit(130)
        self._stop.set()
        control = self.current
        if control is None:
            # Idle: nothing to checkpoint. A Redis call now in redis-py's retries (Redis gone) gives up after its
            # current try instead of sitting out ~30 s of backoff, twice with the unregister: exit in seconds.
            _stop_retrying(self.r)
        if control is not None:
            from worker.control import StopReason

            log.warning("signal %s: checkpointing at the next batch boundary and requeueing", signum)
            control.request(StopReason.PREEMPT)

    def drained(self) -> bool:
        """Whether this worker's machine (host/device) was drained as a lemon (``traind undrain`` puts it back)."""
        from jobs.redis import lemons

        return lemons.is_drained(self.r, lemons.machine_of(socket.gethostname(), self.settings.device))

    # -- registry ------------------------------------------------------------------------------------------------
    def register(self, job_id: str | None = None) -> None:
        """Heartbeat the registry: ``seen`` and the workers zset every call; the whole entry (RQ's view included,
        ~15 commands) only when the current job or jobs done changed or every ``registry_refresh_s`` (bench.scale:
        the full write on every beat was about a third of a busy worker's Redis commands)."""
        import psutil

        if self._proc is None:
            self._proc = psutil.Process()
        now = self.store.now_ms()
        state, mono = (job_id, self.jobs_done), time.monotonic()
        if state == self._reg_state and mono < self._reg_next:
            pipe = self.r.pipeline()
            pipe.hset(keys.worker(self.id), "seen", str(now))
            pipe.zadd(keys.WORKERS, {self.id: now})
            pipe.execute()
            return
        # refreshed well inside the entry's TTL (6 lease TTLs), so it never lapses between full writes
        self._reg_state, self._reg_next = state, mono + min(REGISTRY_REFRESH_S, self.settings.lease_ttl_s * 2)
        info = {
            "id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "device": self.settings.device,
            "devices": self.devices,
            "queues": ",".join(self.settings.queues), "rss_mb": round(self._proc.memory_info().rss / 2**20, 1),
            "cpu_percent": self._proc.cpu_percent(None), "jobs_done": self.jobs_done, "seen": now,
        }
        if job_id is not None:
            info["job"] = job_id
        if self.drained():
            info["drained"] = 1
        if (gpu_mb := gpu_memory_mb(self.gpus)) is not None:
            info["gpu_mem_mb"] = gpu_mb
        pipe = self.r.pipeline()
        pipe.hset(keys.worker(self.id), mapping={k: str(v) for k, v in info.items()})
        if "drained" not in info:
            pipe.hdel(keys.worker(self.id), "drained")
        if job_id is None:
            # HSET leaves other fields alone: without this an idle worker kept reporting its last job as current.
            pipe.hdel(keys.worker(self.id), "job")
        pipe.pexpire(keys.worker(self.id), int(self.settings.lease_ttl_s * 6000))
        pipe.zadd(keys.WORKERS, {self.id: now})
        rqview.register_worker(pipe, self.id, info, self.queues, int(self.settings.lease_ttl_s * 6000))  # `rq info`
        pipe.execute()

    def unregister(self) -> None:
        try:
            self.r.delete(keys.worker(self.id))
            self.r.zrem(keys.WORKERS, self.id)
            rqview.unregister_worker(self.r, self.id, self.queues)
        except Exception:  # best effort on the way out
            pass

    # -- one job -------------------------------------------------------------------------------------------------
    def execute(self, job_id: str, attempt: int) -> None:
        """Claim ``job_id``/``attempt`` and train it (:class:`worker.attempt.Attempt`); a stale message is dropped."""
        from worker.attempt import Attempt

        att = Attempt(self.store, self.storage, self.settings, worker_id=self.id, job_id=job_id, attempt=attempt,
                      on_beat=lambda: self._safe_register(job_id), own_signals=self._own_signals)
        if not att.claim():
            return
        self.current = att.control
        try:
            att.run()
        finally:
            self.current = None
            self.jobs_done += 1
            if att.built:  # clear_session + one gc pass over the jobs' objects only (see _freeze_warm_heap)
                _release_memory()

    def _safe_register(self, job_id: str) -> None:
        try:
            self.register(job_id)
        except Exception:  # registry is informational
            pass


_heap_frozen = False


def _freeze_warm_heap() -> None:
    """Import the job path now and move every object alive so far (TensorFlow, Keras: ~370,000) into the collector's
    permanent generation, before any job runs.

    Every full ``gc`` pass (the one between jobs, and those Python triggers itself while a model is built) otherwise
    walks all of them: ~0.4 s a pass at load 2, seconds at load 17, paid by a preempting job between the victim's
    requeue and its own claim. Frozen objects are import-time state that lives as long as the process anyway; a
    job's objects are created later and are collected as before.
    """
    global _heap_frozen
    if _heap_frozen:  # once a process (tests build several in-process workers): later objects stay collectable
        return
    import worker.attempt  # noqa: F401 - the trainer, Keras' models and callbacks: imported once, then frozen
    import worker.trainer  # noqa: F401

    gc.collect()
    gc.freeze()
    _heap_frozen = True


def _release_memory() -> None:
    """Between jobs: drop the finished job's graph and variables so a long-lived worker does not grow."""
    import keras

    keras.backend.clear_session(free_memory=False)  # its own gc pass would be a second one: collect once, below
    drop_custom_gradients()  # see worker.keras_compat
    gc.collect()


def _stop_retrying(r: Any) -> None:
    """Set every connection's retry budget (each holds a copy) and the pool's, for new ones, to no retries."""
    pool = r.connection_pool
    retry = pool.connection_kwargs.get("retry")
    conns = [*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())]
    for obj in [retry, *(getattr(c, "retry", None) for c in conns)]:
        if obj is not None:
            obj.update_retries(0)
