"""One delivery attempt of a job, from claim to final state: the only owner of an attempt's life.

:meth:`Attempt.claim` moves the job to ``running`` under a fresh fencing token; :meth:`Attempt.run` keeps its lease
alive (:class:`worker.heartbeat.Heartbeat`), trains it (:class:`worker.trainer.Trainer`) and has
:class:`worker.ending.Ending` record how it ended, once: succeeded, failed, cancelled, requeued after a preemption,
or nothing at all when the attempt lost its lease (fenced) or Redis stayed unreachable (the lease expires and a
supervisor requeues it). Every write goes through the attempt's :class:`worker.ledger.RedisLedger`.

>>> # att = Attempt(store, storage, settings, worker_id="w1", job_id=jid, attempt=1)
>>> # if att.claim(): att.run()
"""

from __future__ import annotations

import logging
import secrets
import socket
import traceback
from collections.abc import Callable
from typing import Any

import redis

from jobs.contract.spec import load_stored_spec
from jobs.errors import (
    DurabilityError,
    FencedError,
    IllegalTransitionError,
    JobNotFoundError,
    SpecError,
    StalePrimaryError,
    StorageError,
    TraindError,
)
from jobs.redis.store import JobStore
from jobs.settings import WorkerSettings
from jobs.storage.base import Storage
from worker.control import JobControl, StopReason
from worker.ending import Ending
from worker.heartbeat import Heartbeat
from worker.ledger import AttemptRecord, RedisLedger
from worker.watchdog import Watchdog
from worker.watchdog_policy import Hang, WatchdogConfig

log = logging.getLogger("traind.worker")


class Attempt:
    """Attempt ``attempt`` of ``job_id`` on worker ``worker_id``; ``control`` is where stop requests go."""

    def __init__(self, store: JobStore, storage: Storage, settings: WorkerSettings, *, worker_id: str, job_id: str,
                 attempt: int, on_beat: Callable[[], None] | None = None, own_signals: bool = True) -> None:
        self.store, self.storage, self.settings = store, storage, settings
        self.worker_id, self.job_id, self.attempt = worker_id, job_id, attempt
        self.on_beat = on_beat
        # The worker handles SIGTERM/SIGINT itself (they request a stop and never raise): a KeyboardInterrupt is then
        # the job's own code, never a real Ctrl-C.
        self.own_signals = own_signals
        self.token = secrets.token_hex(16)
        self.ledger = RedisLedger(store, job_id, attempt, self.token)
        self.control = JobControl()
        self._hb: Heartbeat | None = None
        self.built = False  # True once training began building anything (the worker then releases memory)

    def claim(self) -> bool:
        """Take the job for this attempt; False (and nothing changed) for a stale or duplicate message."""
        try:
            self.ledger.claim(self.worker_id, int(self.settings.lease_ttl_s * 1000))
        except (JobNotFoundError, IllegalTransitionError, FencedError, StalePrimaryError) as e:
            log.info("dropping message for %s attempt %s: %s", self.job_id, self.attempt, e)
            return False
        except DurabilityError as e:
            # Claimed on the primary but no replica confirmed it yet: train anyway. Should a failover lose the
            # claim, this attempt's fenced writes are refused and it stops; no second worker can share the job.
            log.warning("job %s: %s; training anyway (fencing guards the job)", self.job_id, e)
        return True

    def run(self) -> None:
        """Train the claimed attempt to its final state, renewing the lease meanwhile."""
        hb = Heartbeat(self.ledger, self.control, self.settings.lease_ttl_s, self.settings.heartbeat_interval_s,
                       on_beat=self.on_beat)
        self._hb = hb
        with hb:
            self._train()
        from jobs.redis.badput import record_finished

        record_finished(self.store, self.job_id, self.settings.lease_ttl_s)  # fleet goodput, once the job ended

    # -- internals -----------------------------------------------------------------------------------------------
    def _train(self) -> None:
        from worker.trainer import Trainer

        job_id, attempt = self.job_id, self.attempt
        try:
            record = AttemptRecord.parse(self.ledger.record())
            spec = load_stored_spec(record.spec, allowed_modules=self.settings.allowed_modules,
                                    max_epochs=self.settings.max_epochs, max_spec_bytes=self.settings.max_spec_bytes)
        except (SpecError, ValueError, KeyError, RecursionError) as e:  # RecursionError: absurdly nested JSON
            self._ending(None).fail(f"failed: invalid spec in Redis: {e}", error=f"invalid spec: {e}")
            return
        self.built = True
        # The lease ends with the job: a success recorded from inside fit stops the heartbeat first, so no beat
        # may find the job gone.
        ending = self._ending(record)
        try:
            # Storage gone (bucket missing, access denied): the job fails with one line naming it, the worker goes on.
            self.storage.check()
            # Inside the try: the constructor resolves the job's storage dir, which can refuse (a symlink out).
            watchdog = self._watchdog(spec.progress_timeout_s).start()
            trainer = Trainer(ledger=self.ledger, storage=self.storage, settings=self.settings, spec=spec,
                              record=record, control=self.control, ending=ending, watch=watchdog.callback)
            try:
                ending.record(trainer.run())  # a no-op when training already ended inside fit
            finally:
                watchdog.stop()
        except FencedError as e:
            log.warning("job %s attempt %s fenced off: %s", job_id, attempt, e)
        except redis.RedisError as e:
            # Redis stayed unreachable past the client's retries: the outcome cannot be recorded. Leave the job
            # to its lease: the supervisor requeues it and the next attempt resumes from the last checkpoint.
            log.error("job %s attempt %s: Redis unreachable (%s); abandoning the attempt", job_id, attempt, e)
        except StorageError as e:
            ending.fail(f"failed: storage error: {e}", error=str(e))
        except TraindError as e:  # UserCodeError, CheckpointError, ...: the job's fault, no retry
            tb = traceback.format_exc(limit=30)
            ending.fail(f"failed: {e}", error=str(e), traceback=tb[-20000:])
        except Exception as e:  # anything else raised while training is the job's, not the worker's
            tb = traceback.format_exc(limit=30)
            ending.fail(f"failed: {type(e).__name__}: {e}", error=f"{type(e).__name__}: {e}", traceback=tb[-20000:])
        except BaseException as e:
            # SystemExit (argparse, sys.exit), KeyboardInterrupt, GeneratorExit raised by the job's own code must
            # cost the job, not the worker. The worker's own SIGTERM/SIGINT handlers never raise (they request a
            # stop), so only without them (run() not in the main thread) can a KeyboardInterrupt be a real Ctrl-C.
            if isinstance(e, KeyboardInterrupt) and not self.own_signals:
                raise
            tb = traceback.format_exc(limit=30)
            error = f"job code raised {type(e).__name__}: {e}"
            ending.fail(f"failed: {error}", error=error, traceback=tb[-20000:])

    def _watchdog(self, job_timeout_s: float | None) -> Watchdog:
        """The attempt's progress watchdog (worker/watchdog.py): on a hang, hand the job back at once and replace
        this process."""
        st = self.settings
        config = WatchdogConfig(job_timeout_s or st.progress_timeout_s, st.progress_factor, st.progress_floor_s,
                                st.progress_first_batch_s)

        def publish(fields: dict[str, Any]) -> None:
            try:
                self.ledger.write(fields=fields)
            except FencedError:
                self.control.request(StopReason.FENCED)

        publish({"progress_timeout_s": config.timeout_s or config.first_batch_s, "progress_seq": 0})
        return Watchdog(config, self._hung, publish=publish, enabled=st.progress_watchdog)

    def _hung(self, hang: Hang, stacks: str) -> None:
        """Called from the watchdog's thread: the job goes back to the queue (or fails after max_restarts)."""
        from jobs.redis.hung import hand_back_hung
        from jobs.redis.lemons import LemonPolicy, machine_of

        if self._hb is not None:
            self._hb.stop()
        handed = hand_back_hung(
            self.store, self.job_id, attempt=self.attempt, token=self.token, epoch=hang.epoch, batch=hang.batch,
            silent_s=hang.silent_s, by="watchdog", machine=machine_of(socket.gethostname(), self.settings.device),
            policy=LemonPolicy(self.settings.lemon_failures, self.settings.lemon_window_s), stacks=stacks)
        log.error("job %s attempt %s hung (%s): %s; replacing this worker process", self.job_id, self.attempt,
                  hang.reason, handed.outcome)

    def _ending(self, record: AttemptRecord | None) -> Ending:
        rec = record or AttemptRecord()
        return Ending(self.ledger, worker_id=self.worker_id, queue=rec.queue, preemptions=rec.preemptions,
                      before_success=lambda: self._hb.stop() if self._hb is not None else None, control=self.control)
