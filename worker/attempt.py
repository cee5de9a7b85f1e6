"""One delivery attempt of a job, from claim to final state: the only owner of an attempt's life.

:meth:`Attempt.claim` moves the job to ``running`` under a fresh fencing token; :meth:`Attempt.run` keeps its lease
alive (:class:`worker.heartbeat.Heartbeat`), trains it (:class:`worker.trainer.Trainer`, which returns an
:class:`worker.trainer.Outcome`) and records how it ended: succeeded, failed, cancelled, requeued after a
preemption (through :func:`jobs.redis.delivery.requeue`), or nothing at all when the attempt lost its lease (fenced) or
Redis stayed unreachable (the lease expires and a supervisor requeues it).

>>> # att = Attempt(store, storage, settings, worker_id="w1", job_id=jid, attempt=1)
>>> # if att.claim(): att.run()
"""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import Callable
from typing import Any

import redis

from jobs.contract.events import EventKind
from jobs.contract.spec import load_stored_spec
from jobs.contract.states import JobState
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
from jobs.redis import telemetry
from jobs.redis.delivery import requeue
from jobs.redis.store import JobStore
from jobs.settings import WorkerSettings
from jobs.storage.base import Storage
from worker.control import JobControl, StopReason
from worker.heartbeat import Heartbeat

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
        self.control = JobControl()
        self._hb: Heartbeat | None = None
        self.built = False  # True once training began building anything (the worker then releases memory)

    def claim(self) -> bool:
        """Take the job for this attempt; False (and nothing changed) for a stale or duplicate message."""
        try:
            self.store.transition(
                self.job_id, JobState.RUNNING, attempt=self.attempt,
                fields={"token": self.token, "worker": self.worker_id, "cancel_requested": None, "error": None},
                lease_ttl_ms=int(self.settings.lease_ttl_s * 1000),
            )
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
        hb = Heartbeat(self.store, self.job_id, self.token, self.control, self.settings.lease_ttl_s,
                       self.settings.heartbeat_interval_s, on_beat=self.on_beat)
        self._hb = hb
        with hb:
            self._train()

    # -- internals -----------------------------------------------------------------------------------------------
    def _finish(self, state: JobState, msg: str, level: str = "info", **fields: Any) -> None:
        try:
            self.store.transition(self.job_id, state, token=self.token, fields=fields, event_msg=msg, level=level)
        except (FencedError, IllegalTransitionError) as e:
            log.warning("job %s: final state %s not recorded: %s", self.job_id, state.value, e)

    def _train(self) -> None:
        from worker.trainer import Outcome, Trainer

        job_id, attempt = self.job_id, self.attempt
        try:
            record = self.store.raw(job_id)
            spec = load_stored_spec(record.get("spec"), allowed_modules=self.settings.allowed_modules,
                                    max_epochs=self.settings.max_epochs, max_spec_bytes=self.settings.max_spec_bytes)
        except (SpecError, ValueError, KeyError, RecursionError) as e:  # RecursionError: absurdly nested JSON
            self._finish(JobState.FAILED, f"failed: invalid spec in Redis: {e}", "error", error=f"invalid spec: {e}")
            return
        self.built = True
        try:
            # Storage gone (bucket missing, access denied): the job fails with one line naming it, the worker goes on.
            self.storage.check()
            # Inside the try: the constructor resolves the job's storage dir, which can refuse (a symlink out).
            recorded: list[Outcome] = []

            def succeeded(outcome: Outcome) -> None:
                # Called from inside fit (Keras' on_train_end) when the last epoch is done: the job ends now, not
                # after fit has torn down its input pipeline. The lease ends with the job: no beat may find it gone.
                if self._hb is not None:
                    self._hb.stop()
                self._finish(JobState.SUCCEEDED, outcome.event, **outcome.fields)
                recorded.append(outcome)

            trainer = Trainer(store=self.store, storage=self.storage, settings=self.settings, job_id=job_id,
                              attempt=attempt, token=self.token, spec=spec, record=record, control=self.control,
                              on_finished=succeeded)
            outcome = trainer.run()
            if outcome.reason is None:
                if not recorded:
                    succeeded(outcome)
            elif outcome.reason is StopReason.CANCEL:
                self._finish(JobState.CANCELLED, outcome.event)
            elif outcome.reason is StopReason.PREEMPT:
                self._requeue_preempted(record, outcome.preempt_key)
            else:
                log.warning("job %s attempt %s fenced off; abandoned without writing", job_id, attempt)
        except FencedError as e:
            log.warning("job %s attempt %s fenced off: %s", job_id, attempt, e)
        except redis.RedisError as e:
            # Redis stayed unreachable past the client's retries: the outcome cannot be recorded. Leave the job
            # to its lease: the supervisor requeues it and the next attempt resumes from the last checkpoint.
            log.error("job %s attempt %s: Redis unreachable (%s); abandoning the attempt", job_id, attempt, e)
        except StorageError as e:
            self._finish(JobState.FAILED, f"failed: storage error: {e}", "error", error=str(e))
        except TraindError as e:  # UserCodeError, CheckpointError, ...: the job's fault, no retry
            tb = traceback.format_exc(limit=30)
            self._finish(JobState.FAILED, f"failed: {e}", "error", error=str(e), traceback=tb[-20000:])
        except Exception as e:  # anything else raised while training is the job's, not the worker's
            tb = traceback.format_exc(limit=30)
            self._finish(JobState.FAILED, f"failed: {type(e).__name__}: {e}", "error",
                         error=f"{type(e).__name__}: {e}", traceback=tb[-20000:])
        except BaseException as e:
            # SystemExit (argparse, sys.exit), KeyboardInterrupt, GeneratorExit raised by the job's own code must
            # cost the job, not the worker. The worker's own SIGTERM/SIGINT handlers never raise (they request a
            # stop), so only without them (run() not in the main thread) can a KeyboardInterrupt be a real Ctrl-C.
            if isinstance(e, KeyboardInterrupt) and not self.own_signals:
                raise
            tb = traceback.format_exc(limit=30)
            error = f"job code raised {type(e).__name__}: {e}"
            self._finish(JobState.FAILED, f"failed: {error}", "error", error=error, traceback=tb[-20000:])

    def _requeue_preempted(self, record: dict[str, str], preempt_key: int | None) -> None:
        """Graceful preemption: hand the job back now (no waiting for the lease) to resume from its checkpoint."""
        fields: dict[str, Any] = {"preemptions": int(record.get("preemptions") or 0) + 1,
                                  "reason": f"preempted on worker {self.worker_id}"}
        if preempt_key is not None:
            fields["preempt_key"] = preempt_key
        try:
            requeue(self.store, self.job_id, attempt=self.attempt, token=self.token, queue=record["queue"],
                    kind=EventKind.PREEMPTED, fields=fields,
                    msg=f"preempted on worker {self.worker_id}; requeued as attempt {self.attempt + 1}")
        except (FencedError, IllegalTransitionError) as e:
            log.warning("job %s: preemption requeue refused: %s", self.job_id, e)
            return
        telemetry.record_requeue(self.store.r, "preempted")
