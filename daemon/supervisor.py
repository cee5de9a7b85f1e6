"""The supervisor: requeues jobs whose worker died, re-delivers lost queue messages, forgets dead workers.

It is stateless: every :meth:`Supervisor.step` re-reads Redis, so a restarted supervisor (or several running at
once) picks up exactly where the last one stopped. Every state change goes through the Lua transition, whose
attempt + lease-expired guard makes a second requeue of the same lost attempt impossible.

>>> # sup = Supervisor(SupervisorSettings(redis_url="redis://localhost:6379/0"))
>>> # sup.step().requeued   # ids requeued this step
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import redis

from daemon.preemptor import Preemptor
from daemon.progress_watch import ProgressWatch, StallTracker
from jobs.alerts.sender import AlertSender
from jobs.contract import keys
from jobs.contract.events import EventKind
from jobs.contract.ids import validate_job_id
from jobs.contract.queue import queue_contents
from jobs.contract.records import JobRecord
from jobs.contract.states import JobState
from jobs.errors import FencedError, IllegalTransitionError, InvalidJobIdError, JobNotFoundError
from jobs.ops import admin
from jobs.redis import lemons, packed, telemetry
from jobs.redis.badput import record_finished
from jobs.redis.conn import connect, redact_url
from jobs.redis.delivery import deliver, requeue
from jobs.redis.replication import PrimaryWatch
from jobs.redis.store import JobStore
from jobs.settings import SupervisorSettings
from jobs.sweep.hook import SweepHook

log = logging.getLogger("traind.supervisor")

SCAN_LIMIT = 1000  # entries handled per step and kind; the rest wait for the next step
_INFO_CACHE_S = 1.0

_JOB_FIELDS = ["state", "attempt", "restarts", "max_restarts", "worker", "queue", "resume_from", "cancel_requested"]


@dataclass
class StepReport:
    """What one supervisor step did.

    >>> StepReport(now_ms=1, requeued=["1a2b"]).changed
    True
    """

    now_ms: int = 0
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    redelivered: list[str] = field(default_factory=list)
    dropped_workers: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)  # running with a live lease, progress stuck: handed back
    preempted: list[str] = field(default_factory=list)  # flagged to yield to a waiting job of higher priority
    skipped_reason: str | None = None
    compacted: int = 0  # finished jobs whose history and events were compacted (jobs/redis/packed.py)
    duration_s: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.redelivered or self.dropped_workers
                    or self.hung or self.preempted)


def _unusable(rec: JobRecord, needed: tuple[str, ...]) -> str | None:
    """The problems of ``rec`` in fields the supervisor decides with; None when it can act on the record."""
    bad = [p for p in rec.problems if p.split(":", 1)[0] in needed]
    return "; ".join(bad) if bad else None


class Supervisor:
    """Watches leases and deliveries in one Redis database.

    >>> # Supervisor(SupervisorSettings(redis_url=url, interval_s=0.5)).run()  # blocks until SIGTERM
    """

    def __init__(self, settings: SupervisorSettings, connection: redis.Redis | None = None) -> None:
        self.settings = settings
        self.r = connection or connect(settings.effective_redis_url(), settings=settings)
        self.store = JobStore(self.r, events_max=settings.events_max, max_history=settings.max_history)
        self._info: tuple[float, float] | None = None  # (monotonic when read, uptime then)
        self._primary = PrimaryWatch()
        self._stop = threading.Event()
        self.sweeps = SweepHook(self.r, settings)  # sweeps: one controller step per pass (jobs/sweep/hook.py)
        self.alerts = AlertSender(self.store, settings)  # alerts: sends the outbox, never blocks a pass (jobs/alerts)
        self._indexed = False  # jobs recorded before the filter indexes existed are all indexed
        tracker = StallTracker(settings.progress_check_factor, settings.progress_check_grace_s)
        self.progress = ProgressWatch(self.store, tracker, _lemon_policy(settings))  # hangs with a live lease
        self.preemptor = Preemptor(self.store, settings)  # priority preemption (daemon/preemptor.py)

    # -- one pass ----------------------------------------------------------------------------------------------------
    def step(self, now_ms: int | None = None) -> StepReport:
        """Run one supervision pass at ``now_ms`` (Redis clock; read from Redis when None)."""
        t0 = time.monotonic()
        seen = self._primary.observe(self.r)  # clock, uptime and identity of one server, read together
        self._info = (t0, seen.uptime_s)
        now = seen.now_ms if now_ms is None else int(now_ms)
        rep = StepReport(now_ms=now)
        uptime = self._redis_uptime_s()
        # After a Redis restart every lease looks expired until workers reconnect and renew: wait one TTL. A fresh
        # Redis without leases (every `traind up`) has nothing to protect, so nothing is skipped or logged.
        leases = self.r.zcard(keys.LEASES) if uptime < self.settings.lease_ttl_s else 0
        if seen.changed:
            # A failover (or restart) put us on another server whose clock may differ from the one that wrote the
            # leases: give every running job one TTL on the new clock (neither all expired nor living forever).
            n = self._primary.rebase_leases(self.r, keys.LEASES, int(self.settings.lease_ttl_s * 1000))
            log.warning("Redis primary changed (now run_id %s): %d lease(s) reset to one TTL (%.1f s)",
                        seen.run_id[:8], n, self.settings.lease_ttl_s)
            rep.skipped_reason = f"redis primary changed; {n} lease(s) given one TTL to renew"
        elif leases:
            rep.skipped_reason = (
                f"redis started {uptime:.1f} s ago (< lease TTL {self.settings.lease_ttl_s} s) with {leases} "
                "running job(s): not requeueing until their workers had a chance to renew"
            )
        else:
            self._expire_leases(now, rep)
            rep.hung = self.progress.step(now)
            self._drop_stale_workers(now, rep)
            rep.preempted = self.preemptor.step(now)
        self._check_deliveries(now, rep)
        if not self._indexed:
            self._indexed = self.store.index_backfill()
        if self.settings.compact_batch:  # finished jobs' history and events -> one compressed value
            # Redis' own clock, not a test's ``now_ms``: a job is compacted once it really finished that long ago.
            rep.compacted = packed.compact_step(self.r, seen.now_ms, int(self.settings.compact_after_s * 1000),
                                                self.store.events_max, self.settings.compact_batch,
                                                self.settings.compact_budget_ms / 1000)
        rep.duration_s = time.monotonic() - t0
        return rep

    def _redis_uptime_s(self) -> float:
        """Seconds since the Redis server started (``INFO server``), read at most once a second."""
        mono = time.monotonic()
        if self._info is not None and mono - self._info[0] < _INFO_CACHE_S:
            return self._info[1] + (mono - self._info[0])
        info = self.r.info("server")
        uptime = float(info.get("uptime_in_seconds", 0))
        self._info = (mono, uptime)
        return uptime

    def _expire_leases(self, now: int, rep: StepReport) -> None:
        expired = self.r.zrangebyscore(keys.LEASES, "-inf", now, start=0, num=SCAN_LIMIT, withscores=True)
        for raw_id, score in expired:
            job_id = self._job_id(raw_id, keys.LEASES)
            if job_id is None:
                continue
            try:
                rec = JobRecord.parse(dict(zip(_JOB_FIELDS, self.r.hmget(keys.job(job_id), _JOB_FIELDS))), job_id)
                if rec.state != JobState.RUNNING.value:
                    self.store.zrem_unless_state(keys.LEASES, job_id, keep=[JobState.RUNNING])
                    continue
                self._handle_lost(job_id, rec, int(score), now, rep)
            except (FencedError, IllegalTransitionError, JobNotFoundError):
                # Another supervisor requeued it first, or the worker renewed / finished meanwhile: nothing to do.
                log.debug("job %s: lease expiry handled elsewhere", job_id)
            except (redis.ConnectionError, redis.TimeoutError):
                raise  # the run loop backs off; the next step retries from Redis' state
            except Exception:  # one corrupt record (WRONGTYPE included) must not stop the others
                log.exception("job %s: cannot handle its expired lease", job_id)

    def _job_id(self, raw: bytes, zset: str) -> str | None:
        """A sorted-set member as a job id; None (logged, and removed: no job can have it) when it is not one."""
        try:
            return validate_job_id(raw.decode())
        except (UnicodeDecodeError, InvalidJobIdError):
            log.error("%s: member %r is not a job id; removing it", zset, raw[:100])
            self.r.zrem(zset, raw)
            return None

    def _fail_corrupt(self, job_id: str, why: str, rep: StepReport, only_from: list[JobState],
                      require_lease_expired: bool = False) -> None:
        """Fail a job whose record cannot be acted on (it would be retried every step, forever): once, logged."""
        error = f"malformed job record ({why}); cannot requeue or deliver it"
        self.store.transition(job_id, JobState.FAILED, only_from=only_from, fields={"error": error, "token": None},
                              event_msg=error, level="error", require_lease_expired=require_lease_expired)
        rep.failed.append(job_id)
        log.error("job %s failed: %s", job_id, error)

    def _handle_lost(self, job_id: str, rec: JobRecord, expired_at: int, now: int, rep: StepReport) -> None:
        if why := _unusable(rec, ("attempt", "restarts", "max_restarts")):
            self._fail_corrupt(job_id, why, rep, [JobState.RUNNING], require_lease_expired=True)
            return
        attempt = rec.attempt if rec.attempt is not None else 1
        restarts = rec.restarts
        max_restarts = rec.max_restarts if rec.max_restarts is not None else 3
        worker = rec.worker or "?"
        ago = max(now - expired_at, 0) / 1000
        reason = f"worker {worker} lost: lease expired"
        if rec.cancel_requested:
            # The user asked to stop it; running it again only to stop at the first heartbeat wastes a worker.
            self.store.transition(
                job_id, JobState.CANCELLED, attempt=attempt, require_lease_expired=True,
                fields={"reason": f"{reason}; cancel was requested", "token": None},
                event_msg=f"worker {worker} lost (lease expired {ago:.1f} s ago) after cancel was requested; cancelled",
                level="warning",
            )
            rep.cancelled.append(job_id)
            log.warning("job %s cancelled: worker %s lost after cancel request", job_id, worker)
            return
        if restarts + 1 > max_restarts:
            error = f"worker lost {restarts + 1} times (max_restarts={max_restarts})"
            self.store.transition(
                job_id, JobState.FAILED, attempt=attempt, require_lease_expired=True,
                fields={"error": error, "reason": reason, "lease_expired_at": expired_at},
                event_msg=f"worker {worker} lost (lease expired {ago:.1f} s ago); {error}: failed",
                level="error",
            )
            rep.failed.append(job_id)
            log.error("job %s failed: %s", job_id, error)
            record_finished(self.store, job_id, self.settings.lease_ttl_s)  # fleet goodput
            return
        resume = rec.resume_from or "best"
        requeue(
            self.store, job_id, attempt=attempt, queue=rec.queue or "", require_lease_expired=True, now_ms=now,
            fields={"restarts": restarts + 1, "reason": reason, "lease_expired_at": expired_at},
            kind=EventKind.REQUEUED,
            # the last renewal: goodput's detection time starts there (jobs/goodput.py)
            event_extra={"lost_at_ms": expired_at - int(self.settings.lease_ttl_s * 1000)},
            msg=(f"worker {worker} lost (lease expired {ago:.1f} s ago); requeued as attempt {attempt + 1} "
                 f"(restart {restarts + 1}/{max_restarts}), resuming from the {resume} checkpoint"),
        )
        rep.requeued.append(job_id)
        log.warning("job %s requeued as attempt %d: worker %s lost", job_id, attempt + 1, worker)
        _lemon_lost(self.r, worker, job_id, now, self.settings)
        # kill -> requeue, measured from the last lease renewal (the latest moment the worker was known alive)
        telemetry.record_requeue(self.r, "worker_lost",
                                 detection_s=(now - expired_at) / 1000 + self.settings.lease_ttl_s)

    def _check_deliveries(self, now: int, rep: StepReport) -> None:
        cutoff = now - int(self.settings.redelivery_check_s * 1000)
        due = self.r.zrangebyscore(keys.PENDING, "-inf", cutoff, start=0, num=SCAN_LIMIT, withscores=True)
        if not due:
            return
        # Pipelined: with a backlog of thousands of queued jobs, a round trip per job kept the supervisor busy
        # (bench.queue, `delivery check due` row) and delayed lease expiry handling behind it.
        due_ids = [(job_id, score) for raw_id, score in due if (job_id := self._job_id(raw_id, keys.PENDING))]
        pipe = self.r.pipeline(transaction=False)
        for job_id, _ in due_ids:
            pipe.hmget(keys.job(job_id), ["state", "attempt", "queue"])
        records = pipe.execute(raise_on_error=False)  # a WRONGTYPE job key is that entry's error, not the pass's
        contents: dict[str, set[str]] = {}  # each queue's message ids, read once per step
        waiting: list[str] = []
        for (job_id, score), record in zip(due_ids, records):
            try:
                if isinstance(record, Exception):
                    raise record
                if self._check_delivery(job_id, int(score), now, record, contents, rep):
                    waiting.append(job_id)
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception:  # one corrupt record must not stop supervision of the others
                log.exception("job %s: cannot check its delivery", job_id)
        if waiting:  # still on their queue, waiting for a free worker: check again later (only if still pending)
            pipe = self.r.pipeline(transaction=False)
            for job_id in waiting:
                pipe.zadd(keys.PENDING, {job_id: now}, xx=True)
            pipe.execute()

    def _check_delivery(self, job_id: str, score: int, now: int, record: list[bytes | None],
                        contents: dict[str, set[str]], rep: StepReport) -> bool:
        """Re-enqueue a pending job whose message is gone; True when its message is still waiting on its queue."""
        rec = JobRecord.parse(dict(zip(("state", "attempt", "queue"), record)), job_id)
        if rec.state not in (JobState.QUEUED.value, JobState.REQUEUED.value):
            self.store.zrem_unless_state(keys.PENDING, job_id, keep=[JobState.QUEUED, JobState.REQUEUED])
            return False
        if why := _unusable(rec, ("attempt",)):
            self._fail_corrupt(job_id, why, rep, [JobState.QUEUED, JobState.REQUEUED])
            return False
        attempt, queue = (rec.attempt if rec.attempt is not None else 1), rec.queue or ""
        if not queue:
            log.error("job %s has no queue field; cannot deliver it", job_id)
            return False
        if queue not in contents:
            contents[queue] = queue_contents(self.r, queue)
        rq_id = keys.rq_job_id(job_id, attempt)
        if rq_id in contents[queue]:
            return True
        if score == 0 and self._stamped_since(job_id):
            return False  # its submitter delivered it after this pass read the queue: nothing to redo
        # A duplicate (the submitter enqueues right now, or a worker holds the popped message and is about to
        # claim) is harmless: the claim checks state and attempt, and a popped duplicate still names its job.
        deliver(self.store, job_id, attempt, queue, when_ms=now)
        contents[queue].add(rq_id)
        rep.redelivered.append(job_id)
        if score != 0:
            # Delivered once, but the message is gone and nobody claimed it: a worker popped it and died.
            self.store.add_event(job_id, EventKind.REDELIVERED, "queue message lost; re-enqueued", "warning")
            log.warning("job %s: queue message %s lost; re-enqueued", job_id, rq_id)
        else:
            log.info("job %s: enqueued attempt %d (its submitter or requeuer stopped before enqueueing)",
                     job_id, attempt)
        return False

    def _stamped_since(self, job_id: str) -> bool:
        """Whether the job's pending score left 0 since this pass read it: a ``submit_many`` of thousands of jobs
        delivers them while a pass walks its score-0 entries (bench.scale: 2,080 duplicate enqueues in one pass)."""
        score = self.r.zscore(keys.PENDING, job_id)
        return score is not None and score > 0

    def _drop_stale_workers(self, now: int, rep: StepReport) -> None:
        cutoff = now - int(self.settings.worker_stale_s * 1000)
        rep.dropped_workers = self.store.drop_stale_workers(cutoff, SCAN_LIMIT)
        for w in rep.dropped_workers:
            log.info("worker %s unseen for %.0f s: unregistered", w, self.settings.worker_stale_s)

    # -- loop --------------------------------------------------------------------------------------------------------
    def idle(self) -> bool:
        """True when no job is running, queued or waiting for a delivery, and no alert waits to be sent (what
        ``burst`` waits for)."""
        pipe = self.r.pipeline(transaction=False)
        for st in (JobState.RUNNING, JobState.QUEUED, JobState.REQUEUED):
            pipe.scard(keys.state_index(st.value))
        pipe.zcard(keys.PENDING)
        pipe.zcard(keys.LEASES)
        pipe.xlen(keys.ALERTS_OUTBOX)
        return not any(pipe.execute())

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step."""
        self._stop.set()

    def run(self) -> int:
        """Step every ``interval_s`` until stopped (SIGTERM/SIGINT in the main thread); never dies on Redis errors."""
        restore = self._install_signals()
        log.info("supervisor watching %s every %.2f s (lease TTL %.1f s)",
                 redact_url(self.settings.effective_redis_url()), self.settings.interval_s, self.settings.lease_ttl_s)
        backoff = 0.05
        skipping = False
        try:
            while not self._stop.is_set():
                try:
                    rep = self.step()
                    telemetry.supervisor_pass(self.r, rep.now_ms)  # for `traind health --supervisor`
                    admin.retention(self.store, self.settings.storage_dir, self.settings.finished_ttl_s)
                    self.sweeps.step()
                    self.alerts.step()
                    if self.settings.burst and self.idle():
                        log.info("burst: nothing running or pending; exiting")
                        return 0
                except Exception as e:  # the supervisor must outlive Redis outages and its own bugs
                    self._info = None  # Redis may have restarted: re-read its uptime before requeueing anything
                    if isinstance(e, redis.RedisError):
                        log.warning("redis error (%s: %s); retrying in %.2f s", type(e).__name__, e, backoff)
                    else:
                        log.exception("supervisor step failed; retrying in %.2f s", backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                if bool(rep.skipped_reason) != skipping:  # log the start and end of a grace period, not every step
                    skipping = bool(rep.skipped_reason)
                    log.info("%s", rep.skipped_reason or "redis restart grace over; requeueing expired leases again")
                self._stop.wait(self.settings.interval_s)
            return 0
        finally:
            restore()

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            self._stop.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore


def _lemon_policy(settings: SupervisorSettings) -> lemons.LemonPolicy:
    return lemons.LemonPolicy(settings.lemon_failures, settings.lemon_window_s)


def _lemon_lost(r: redis.Redis, worker: str, job_id: str, now: int, settings: SupervisorSettings) -> None:
    """A lost worker counts against its machine (repeated losses drain it: issue 19's lemon workers)."""
    machine = lemons.machine_of_worker(r, worker)
    if machine and lemons.record_failure(r, machine, kind="lost", job_id=job_id, now_ms=now,
                                         policy=_lemon_policy(settings)):
        log.error("machine %s drained: repeated hangs or losses", machine)
