"""Simulated traind workers for ``bench.scale``: one process runs many, one thread each, speaking the real protocol.

Every Redis call is the real worker's: ``jobs.contract.queue.pop``, ``worker.ledger.RedisLedger`` (claim, begin,
progress, epoch end, checkpoint commit, renew, end: the same Lua scripts), ``jobs.redis.delivery.reject``, the
registry write of ``worker.runner.Worker.register`` (on every heartbeat, as the real heartbeat's ``on_beat`` does)
and ``jobs.redis.badput.record_finished``. Only TensorFlow is missing: an "epoch" is ``epoch_s`` seconds of one
progress write and one lease renewal per second.

Schedule (seconds after the phase start, from ``--plan`` JSON): at each of ``kill_at`` a fraction of the busy
workers die (stop renewing, as a SIGKILL would; a replacement with a new id starts ``restart_s`` later), at each of
``hang_at`` a fraction hang (renew the lease, no progress: only the supervisor's progress check can notice).

    python -m bench._scale_sim URL PREFIX COUNT PLAN_JSON OUT_JSON
"""

from __future__ import annotations

import json
import os
import queue
import random
import socket
import sys
import threading
import time
from typing import Any

import redis

from jobs.contract import keys
from jobs.contract.events import EventKind, event
from jobs.contract.queue import pop
from jobs.contract.states import JobState
from jobs.errors import FencedError, IllegalTransitionError, JobNotFoundError
from jobs.redis import lemons, rqview, telemetry
from jobs.redis.badput import record_finished
from jobs.redis.delivery import reject
from jobs.redis.store import JobStore, _s
from jobs.redis.telemetry import CHANNEL
from worker.ledger import EpochRecord, Progress, RedisLedger

HOST = socket.gethostname()
QUEUES = keys.worker_queue_names(["default"], "cpu", 1)
REGISTRY_REFRESH_S = 10.0  # worker.runner's (not imported: it pulls in the worker's modules; a test compares them)


class Batcher(threading.Thread):
    """One per process: the workers' once-a-second calls (lease renewal through the real HEARTBEAT script, mid-epoch
    progress through the real FENCED_UPDATE script with its notification, the registry's light beat) go out in one
    pipeline every ``flush_s``, as 1,000 workers on 1,000 machines would each send theirs. Round 1 sent each call on
    its own round trip from 250 threads a process and starved the 2 cores (ticks up to 13 s late)."""

    def __init__(self, r: redis.Redis, flush_s: float = 0.02) -> None:
        super().__init__(name="batcher", daemon=True)
        self.r, self.flush_s = r, flush_s
        self.q: queue.SimpleQueue[tuple[Any, list[Any], threading.Event]] = queue.SimpleQueue()
        self.batches = self.items = 0

    def call(self, build: Any) -> list[Any]:
        """Queue ``build(pipe)``'s commands into the next batch; their replies (an error reply as an exception)."""
        box: list[Any] = []
        done = threading.Event()
        self.q.put((build, box, done))
        done.wait()
        if len(box) == 1 and isinstance(box[0], BaseException) and not isinstance(box[0], redis.ResponseError):
            raise box[0]
        return box

    def run(self) -> None:
        while True:
            items = [self.q.get()]
            time.sleep(self.flush_s)  # let the other due workers' calls join this batch
            while True:
                try:
                    items.append(self.q.get_nowait())
                except queue.Empty:
                    break
            pipe = self.r.pipeline(transaction=False)
            counts = []
            for build, _, _ in items:
                n0 = len(pipe.command_stack)
                build(pipe)
                counts.append(len(pipe.command_stack) - n0)
            try:
                res: list[Any] | None = pipe.execute(raise_on_error=False)
                err: BaseException | None = None
            except Exception as e:  # the connection: every caller of this batch sees it
                res, err = None, e
            self.batches += 1
            self.items += len(items)
            i = 0
            for (_, box, done), n in zip(items, counts):
                box.extend(res[i:i + n] if res is not None else [err])
                i += n
                done.set()


class Shared:
    """What the threads of one process share: the store, the plan, the records the harness reads at the end."""

    def __init__(self, url: str, plan: dict[str, Any]) -> None:
        self.r = redis.Redis.from_url(url, max_connections=4000, socket_timeout=30)
        self.store = JobStore(self.r)
        from jobs.contract.fair import FairPolicy
        from jobs.settings import WorkerSettings

        ws = WorkerSettings(redis_url=url, lease_ttl_s=plan["lease_ttl_s"], dequeue_timeout_s=plan["dequeue_timeout_s"])
        self.fair = FairPolicy.from_settings(ws) if ws.fair_share else None  # as worker.runner.Worker does
        self.plan = plan
        self.t0 = plan["t0"]  # the phase start, time.time() (the same clock as Redis' on this machine)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.kills: list[dict[str, Any]] = []
        self.hangs: list[dict[str, Any]] = []
        self.claims: list[float] = []  # pop -> claimed (s)
        self.writes = {"progress": 0, "epoch": 0, "checkpoint": 0, "renew": 0, "register": 0, "register_light": 0,
                       "end": 0}
        self.late: list[float] = []  # how late a worker's 1 s tick ran (s): the simulation's own overload
        self.lags: list[float] = []  # each tick: scheduled -> its renewal answered (s): the harness's lag
        self.batch = Batcher(self.r, plan.get("flush_s", 0.02))
        self.batch.start()
        self.errors: list[str] = []
        self.workers: list[SimWorker] = []
        self.rss_mb = 0.0
        self.drained = False  # lemons.is_drained of this machine, read once a second (main)

    def count(self, what: str) -> None:
        with self.lock:
            self.writes[what] += 1


class SimWorker(threading.Thread):
    """One simulated worker: register, pop, claim, train ``epochs`` epochs, end; die or hang when told to."""

    def __init__(self, sh: Shared, wid: str) -> None:
        super().__init__(name=wid, daemon=True)
        self.sh, self.id = sh, wid
        self.job: str | None = None
        self.doom: str | None = None  # "die" / "hang": set by the scheduler, acted on at the next tick
        self.dead = False
        self.jobs_done = 0
        self._reg_state: tuple[str | None, int] | None = None  # as worker.runner.Worker: the last full write's
        self._reg_next = 0.0

    # -- worker.runner.Worker.register, as written there (registry hash, RQ's view, the workers zset) --------------
    def register_due(self, job_id: str | None) -> bool:
        """Whether the whole entry is due (``worker.runner.Worker.register``'s rule); if not, the light beat is."""
        mono = time.monotonic()
        if (job_id, self.jobs_done) == self._reg_state and mono < self._reg_next:
            return False
        self._reg_state = (job_id, self.jobs_done)
        self._reg_next = mono + min(REGISTRY_REFRESH_S, self.sh.plan["lease_ttl_s"] * 2)
        return True

    def light_register(self, pipe: Any) -> None:
        """The light beat's two commands (``seen`` from this machine's clock: the same as Redis' here)."""
        now = int(time.time() * 1000)
        pipe.hset(keys.worker(self.id), "seen", str(now))
        pipe.zadd(keys.WORKERS, {self.id: now})

    def register(self, job_id: str | None, full: bool | None = None) -> None:
        if not (self.register_due(job_id) if full is None else full):
            self.sh.batch.call(self.light_register)
            self.sh.count("register_light")
            return
        # The full entry's commands, batched like the ticks; the machine's drained flag is read once a second per
        # process (Shared.drained) instead of per worker, and "seen" comes from this machine's clock (Redis' too).
        now = int(time.time() * 1000)
        info: dict[str, Any] = {"id": self.id, "host": HOST, "pid": os.getpid(), "device": "cpu", "devices": 1,
                                "queues": "default", "rss_mb": self.sh.rss_mb, "cpu_percent": 0.0,
                                "jobs_done": self.jobs_done, "seen": now}
        if job_id is not None:
            info["job"] = job_id
        if self.sh.drained:
            info["drained"] = 1

        def build(pipe: Any) -> None:
            pipe.hset(keys.worker(self.id), mapping={k: str(v) for k, v in info.items()})
            if "drained" not in info:
                pipe.hdel(keys.worker(self.id), "drained")
            if job_id is None:
                pipe.hdel(keys.worker(self.id), "job")
            pipe.pexpire(keys.worker(self.id), int(self.sh.plan["lease_ttl_s"] * 6000))
            pipe.zadd(keys.WORKERS, {self.id: now})
            rqview.register_worker(pipe, self.id, info, QUEUES, int(self.sh.plan["lease_ttl_s"] * 6000))

        self.sh.batch.call(build)
        self.sh.count("register")

    def run(self) -> None:
        try:
            while not self.sh.stop.is_set() and not self.dead:
                self.register(None)
                d = pop(self.sh.r, QUEUES, self.sh.plan["dequeue_timeout_s"], self.sh.fair)
                if d is None:
                    continue
                if d.message is None:
                    reject(self.sh.store, d)
                    continue
                self.train(d.message.job_id, d.message.attempt, time.perf_counter())
        except Exception as e:  # one simulated worker's crash is a result line, not the run's end
            with self.sh.lock:
                self.sh.errors.append(f"{self.id}: {type(e).__name__}: {e}"[:300])

    def train(self, job_id: str, attempt: int, popped: float) -> None:
        sh, plan = self.sh, self.sh.plan
        import secrets

        led = RedisLedger(sh.store, job_id, attempt, secrets.token_hex(16))
        try:
            led.claim(self.id, int(plan["lease_ttl_s"] * 1000))
        except (JobNotFoundError, IllegalTransitionError, FencedError):
            return  # a stale or duplicate message, dropped as worker.attempt.Attempt.claim drops it
        with sh.lock:
            sh.claims.append(time.perf_counter() - popped)
        self.job = job_id
        try:
            self._train(led, attempt)
        except FencedError:
            pass  # handed back (hung) or requeued meanwhile: the attempt stops, as the real one does
        finally:
            self.job = None

    def _train(self, led: RedisLedger, attempt: int) -> None:
        sh, plan = self.sh, self.sh.plan
        rec = led.record()
        epochs, epoch = int(rec.get("epochs") or 3), int(rec.get("epoch") or 0)
        led.write(fields={"progress_timeout_s": plan["progress_timeout_s"], "progress_seq": 0})
        led.begin({"resumed_from_epoch": epoch, "batch": 0}, history_del=[], ckpt_del=[],
                  events=[event(EventKind.NOTE, f"attempt {attempt} on {self.id}: resuming after epoch {epoch}")])
        steps = plan["steps"]
        ticks_per_epoch = max(2, round(plan["epoch_s"] / plan["heartbeat_interval_s"]))
        tick, batch, hung_since = 0, 0, None
        nxt = time.time() + random.random()
        while not sh.stop.is_set():
            delay = nxt - time.time()
            if delay > 0:
                time.sleep(delay)
            else:
                with sh.lock:
                    sh.late.append(-delay)
            due = nxt
            nxt += plan["heartbeat_interval_s"]
            # This tick's calls in one batch: the renewal (what worker.heartbeat.Heartbeat calls), the registry's
            # light beat when no full write is due, and a mid-epoch progress write (fenced: refused if not owner).
            full = self.register_due(led.job_id)
            step = None
            if self.doom is None and (tick + 1) % ticks_per_epoch:
                step = Progress(min(steps, batch + max(1, steps // ticks_per_epoch)), steps, epoch + 1,
                                {"loss": round(random.random(), 4)})
            owner, cancel = self._tick(led, full, step)
            with sh.lock:
                sh.lags.append(time.time() - due)
            sh.count("renew")
            if self.doom == "die":  # killed at a random moment between two renewals, as a real SIGKILL lands
                renewed = int(time.time() * 1000)
                time.sleep(random.random() * plan["heartbeat_interval_s"])
                self._die(led, attempt, renewed)
                return
            if not owner:
                if hung_since is not None:  # the supervisor handed the hung attempt back
                    self.doom = None  # this worker's next job runs normally
                    with sh.lock:
                        sh.hangs.append({"job": led.job_id, "attempt": attempt, "hung_ms": hung_since,
                                         "noticed_ms": int(time.time() * 1000)})
                return
            if full:
                self.register(led.job_id, full=True)
            if cancel:
                led.end(JobState.CANCELLED, "cancelled at a batch boundary")
                return
            if self.doom == "hang":
                hung_since = hung_since or int(time.time() * 1000)
                continue
            tick += 1
            batch = min(steps, batch + max(1, steps // ticks_per_epoch))
            if tick % ticks_per_epoch:
                sh.count("progress")  # written in this tick's batch
                continue
            epoch, batch = epoch + 1, 0
            self._epoch_end(led, epoch, attempt)
            if epoch >= epochs:
                led.end(JobState.SUCCEEDED, f"succeeded after {epoch} epochs", fields={"batch": 0})
                record_finished(sh.store, led.job_id, plan["lease_ttl_s"])
                sh.count("end")
                self.jobs_done += 1
                return

    def _tick(self, led: RedisLedger, full: bool, step: Progress | None) -> tuple[bool, bool]:
        """One tick's batch; (still owner, cancel requested), read as ``JobStore.beat`` reads the script's reply."""
        st, ttl_ms = self.sh.store, int(self.sh.plan["lease_ttl_s"] * 1000)
        j = led.job_id

        def build(pipe: Any) -> None:
            st._heartbeat(keys=[keys.job(j), keys.LEASES], args=[j, led.token, ttl_ms], client=pipe)
            if not full:
                self.light_register(pipe)
            if step is not None:  # JobStore.fenced_update's progress call, then telemetry.on_progress's notification
                fields = {"batch": step.batch, "steps": step.steps, "running_epoch": step.running_epoch,
                          "batch_metrics": step.batch_metrics}
                st._fenced(keys=[keys.job(j), keys.history(j), keys.checkpoints(j), keys.events(j)],
                           args=[led.token, json.dumps({"fields": {k: _s(v) for k, v in fields.items()}}),
                                 st.events_max, st.max_history], client=pipe)
                pipe.publish(CHANNEL, json.dumps({"job": j, "kind": "progress"}, separators=(",", ":")))

        res = self.sh.batch.call(build)
        if isinstance(res[0], BaseException):
            raise res[0]
        text = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in res[0]]
        owner = text[0] == "1"
        if not full:
            self.sh.count("register_light")
        return owner, owner and text[1] == "1"

    def _epoch_end(self, led: RedisLedger, epoch: int, attempt: int) -> None:
        """The epoch's commit and its checkpoint's, batched: the two FENCED_UPDATE calls ``RedisLedger.epoch_end``
        and ``commit_checkpoint`` make, with ``telemetry.on_progress``'s histogram sample and notifications."""
        sh, st, j = self.sh, self.sh.store, led.job_id
        loss = round(1.0 / epoch + random.random() * 0.01, 6)
        metrics = {"loss": loss, "val_loss": round(loss * 1.1, 6), "mae": round(loss * 0.7, 6)}
        entry = {"epoch": epoch, **metrics, "time_s": sh.plan["epoch_s"]}
        rec = EpochRecord(epoch, metrics, entry, [event(
            EventKind.EPOCH, f"epoch {epoch}: val_loss improved to {metrics['val_loss']}; checkpointing it as best")],
            best_value=metrics["val_loss"], improved=True)
        key = epoch * 1_000_000
        manifest = {"key": key, "file": f"jobs/{j}/ckpt/e{epoch:05d}-b000000-a{attempt}.npz",
                    "sha256": f"{random.getrandbits(256):064x}", "size": 48_211, "epoch": epoch, "batch": 0,
                    "attempt": attempt}
        old = [(epoch - 3) * 1_000_000] if epoch > 3 else []
        ks = [keys.job(j), keys.history(j), keys.checkpoints(j), keys.events(j)]
        commit = {"fields": {k: _s(v) for k, v in rec.fields().items()}, "history_set": {str(epoch): json.dumps(entry)},
                  "events": rec.events}
        ckpt = {"fields": {"latest_ckpt_key": str(key), "best_ckpt_key": str(key)},
                "ckpt_set": {str(key): json.dumps(manifest)}, "ckpt_del": old,
                "events": [event(EventKind.NOTE, f"checkpoint {manifest['file']} committed")]}
        hist = telemetry.hist_key("epoch_seconds")
        bucket = next((f"{b:g}" for b in telemetry.BUCKETS["epoch_seconds"] if entry["time_s"] <= b), "+Inf")

        def build(pipe: Any) -> None:
            st._fenced(keys=ks, args=[led.token, json.dumps(commit), st.events_max, st.max_history], client=pipe)
            pipe.hincrby(hist, bucket, 1)
            pipe.hincrbyfloat(hist, "sum", float(entry["time_s"]))
            pipe.hincrby(hist, "count", 1)
            pipe.publish(CHANNEL, json.dumps({"job": j, "kind": "epoch", "epoch": epoch}, separators=(",", ":")))
            st._fenced(keys=ks, args=[led.token, json.dumps(ckpt), st.events_max, st.max_history], client=pipe)
            pipe.publish(CHANNEL, json.dumps({"job": j, "kind": "checkpoint", "key": key}, separators=(",", ":")))

        res = sh.batch.call(build)
        for reply in (res[0], res[5]):
            if isinstance(reply, BaseException) or not int(reply[0]):
                raise FencedError(f"job {j}: no longer owned by this attempt ({reply})")
        sh.count("epoch")
        sh.count("checkpoint")

    def _die(self, led: RedisLedger, attempt: int, renewed_ms: int) -> None:
        """Stop renewing at once (a SIGKILL): the lease lapses and only the supervisor can requeue the job."""
        self.dead = True
        with self.sh.lock:
            self.sh.kills.append({"job": led.job_id, "attempt": attempt, "worker": self.id,
                                  "killed_ms": int(time.time() * 1000), "renewed_ms": renewed_ms})
        threading.Timer(self.sh.plan["restart_s"], self.sh_restart).start()

    def sh_restart(self) -> None:
        if not self.sh.stop.is_set():
            start_worker(self.sh, f"{self.id}r")


def start_worker(sh: Shared, wid: str) -> SimWorker:
    w = SimWorker(sh, wid)
    with sh.lock:
        sh.workers.append(w)
    w.start()
    return w


def schedule(sh: Shared) -> None:
    """Doom a fraction of the busy workers at each planned time (kills, then hangs)."""
    plan = sh.plan
    events = [(t, "die", plan["kill_fraction"]) for t in plan["kill_at"]]
    events += [(t, "hang", plan["hang_fraction"]) for t in plan["hang_at"]]
    rng = random.Random(plan["seed"])
    for at, what, frac in sorted(events):
        if sh.stop.wait(max(0.0, sh.t0 + at - time.time())):
            return
        busy = [w for w in sh.workers if w.job and w.doom is None and not w.dead and w.is_alive()]
        late = time.time() + 1.0
        while not busy and time.time() < late:  # a process that started late (a loaded machine): its first claims
            time.sleep(0.05)
            busy = [w for w in sh.workers if w.job and w.doom is None and not w.dead and w.is_alive()]
        n = min(len(busy), max(plan.get("min_per_round", 1), round(frac * len(busy))))
        for w in rng.sample(busy, n):
            w.doom = what


def main(argv: list[str] | None = None) -> int:
    url, prefix, count, plan_s, out = (argv or sys.argv[1:])[:5]
    plan = json.loads(plan_s)
    sh = Shared(url, plan)
    import psutil

    proc = psutil.Process()
    sh.rss_mb = round(proc.memory_info().rss / 2**20, 1)
    threading.Thread(target=schedule, args=(sh,), daemon=True).start()
    for i in range(int(count)):
        start_worker(sh, f"{prefix}-{i:04d}")
        time.sleep(plan.get("stagger_s", 0.0))
    cpu0 = proc.cpu_times()
    end = sh.t0 + plan["duration_s"]
    while time.time() < end:
        time.sleep(0.5)
        sh.rss_mb = round(proc.memory_info().rss / 2**20, 1)
        sh.drained = lemons.is_drained(sh.r, lemons.machine_of(HOST, "cpu"))
    sh.stop.set()
    cpu1 = proc.cpu_times()
    for w in list(sh.workers):
        w.join(timeout=5)
    lags = sorted(sh.lags)
    res = {"lag_p50_s": lags[len(lags) // 2] if lags else None,
           "lag_p95_s": lags[int(0.95 * (len(lags) - 1))] if lags else None, "lag_n": len(lags),
           "lag_max_s": lags[-1] if lags else None, "batches": sh.batch.batches, "batched_calls": sh.batch.items,
           "kills": sh.kills, "hangs": sh.hangs, "claims_s": sh.claims, "writes": sh.writes,
           "late_s": sorted(sh.late)[-200:], "late_n": len(sh.late), "ticks_over_0_5s": sum(x > 0.5 for x in sh.late),
           "errors": sh.errors[:20], "errors_n": len(sh.errors), "workers_started": len(sh.workers),
           "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}
    with open(out, "w") as f:
        json.dump(res, f)
    os._exit(0)  # threads blocked in BLPOP need not be waited for


if __name__ == "__main__":
    raise SystemExit(main())
