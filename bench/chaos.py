"""Chaos run: SIGKILL random worker process trees while jobs train, then check that nothing was lost.

Starts its own redis-server (unless ``--redis-url``), one supervisor and W worker processes, submits J small
regression jobs, and SIGKILLs the process group of a random busy worker K times at random moments: half of the
kills land mid-epoch, half at the moment a checkpoint is being written (a ``.tmp`` file appears in the job's
checkpoint dir, or the job's epoch count just changed: the epoch-end checkpoint is written right after that).
Each killed worker is replaced by a fresh process. Then it waits (with an overall deadline) until every job is
terminal and reports:

* jobs succeeded / failed / lost (lost = not terminal at the deadline, or its record is missing);
* total restarts, and per kill the detection latency (kill time -> the supervisor's requeue, both on Redis' clock);
* epochs redone (per job: epochs trained, counted from the per-epoch events, minus the epochs in the final result;
  per kill: epochs finished before the kill minus the epoch the next attempt resumed from);
* double training: a sampler thread checks, ~20 times a second, that no two live workers report the same job in
  their ``traind:worker:<id>`` hash and that each attempt of a job only ever names one worker; afterwards each job's
  claim events, history and checkpoint index are checked (one claim per attempt, one history entry per epoch,
  checkpoint attempts never decreasing with the epoch);
* model files: each succeeded job's ``best``/``final`` export must match the sha256 in its record (what
  ``JobHandle.load_model`` verifies), i.e. no killed or stale attempt left a torn or foreign model file behind.

Exit status 0 only when every job succeeded, none was lost, all K kills happened, no double training was seen and
every model file matches its record.

    python -m bench.chaos --jobs 10 --workers 3 --kills 20 --seed 1 --json chaos.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from testkit.cluster import RedisServer, git_state, percentile

ROOT = Path(__file__).resolve().parents[1]  # the directory holding the jobs/, worker/, daemon/ packages


@dataclass
class Kill:
    """One injected SIGKILL and what came of it."""

    n: int
    mode: str  # "mid-epoch" or "checkpoint"
    worker: str
    job: str
    kill_ms: int  # Redis clock
    state: str  # the job's state just before the kill
    attempt: int
    epoch: int  # epochs finished when the kill landed
    batch: int  # last published batch of the running epoch
    trigger: str = ""  # checkpoint mode: "tmp-file" or "epoch-change" (or "timeout")
    requeue_ms: int | None = None
    detect_ms: int | None = None
    resumed_from: int | None = None
    redone: int | None = None
    outcome: str = ""


@dataclass
class Proc:
    """A child process of the run (one incarnation of a worker slot, or the supervisor)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)  # its own session: the group is the whole tree
            except ProcessLookupError:
                pass
        self.popen.wait(30)


@dataclass
class Sampler:
    """Watches for double training while the run goes on (a thread with its own Redis connection)."""

    r: redis.Redis
    live: dict[str, Proc]  # worker id -> process (the run mutates it; read under `lock`)
    job_ids: list[str]
    lock: threading.Lock
    interval_s: float = 0.05
    samples: int = 0
    overlaps: list[dict[str, Any]] = field(default_factory=list)
    attempt_workers: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except redis.RedisError:
                pass  # Redis hiccup: skip this sample
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        with self.lock:
            live = {wid: p for wid, p in self.live.items() if p.alive}
        pipe = self.r.pipeline(transaction=False)
        for wid in live:
            pipe.hget(f"traind:worker:{wid}", "job")
        for jid in self.job_ids:
            pipe.hmget(f"traind:job:{jid}", ["state", "attempt", "worker"])
        res = pipe.execute()
        holders: dict[str, list[str]] = {}
        for wid, job in zip(live, res[: len(live)]):
            # Re-check liveness after the read: a worker killed meanwhile still names its job until the requeue.
            if job is not None and live[wid].alive:
                holders.setdefault(job.decode(), []).append(wid)
        for job, wids in holders.items():
            if len(wids) > 1:
                self.overlaps.append({"t": time.time(), "job": job, "workers": sorted(wids)})
        for jid, (state, attempt, worker) in zip(self.job_ids, res[len(live):]):
            if state == b"running" and attempt and worker:
                self.attempt_workers.setdefault((jid, int(attempt)), set()).add(worker.decode())
        self.samples += 1


ALLOWED = "examples,bench"  # the jobs reference examples.regression or bench.models


def job_spec(i: int, epochs: int, samples: int, max_restarts: int, batch_delay_s: float = 0.0) -> dict[str, Any]:
    """A small regression job: ~40 batches an epoch, alternating the resume policy. With ``batch_delay_s`` every
    batch also sleeps that long (bench.models:slow_mlp): a job lasts at least epochs x batches x delay on any
    machine, however idle, so the kills find it running."""
    if batch_delay_s > 0:
        model = {"builder": "bench.models:slow_mlp",
                 "builder_kwargs": {"dim": 1, "units": 16, "batch_delay_s": batch_delay_s}}
        data = {"loader": "bench.models:regression_data", "loader_kwargs": {"n": samples, "dim": 1, "seed": i}}
    else:
        model = {"builder": "examples.regression:build_model", "builder_kwargs": {"units": 16}}
        data = {"loader": "examples.regression:load_data", "loader_kwargs": {"n": samples, "seed": i}}
    return {
        "name": f"chaos-{i}",
        "model": model,
        "data": data,
        "fit": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2, "seed": i},
        "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True, "keep_last": 2},
        "resume_from": "best" if i % 2 else "latest",
        "max_restarts": max_restarts,
    }


class Chaos:
    """One chaos run; :meth:`run` returns the summary dict."""

    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.argv = argv
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.tmpdir: Path | None = None
        if args.workdir:
            self.dir = Path(args.workdir).resolve()
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.tmpdir = self.dir = Path(tempfile.mkdtemp(prefix="traind-chaos-"))
        storage = args.storage or os.environ.get("TRAIND_STORAGE_DIR")
        self.storage = Path(storage).resolve() if storage else self.dir / "storage"
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_srv: RedisServer | None = None
        self.url = args.redis_url or os.environ.get("TRAIND_REDIS_URL") or ""
        self.lock = threading.Lock()
        self.workers: dict[str, Proc] = {}  # live incarnations by worker id
        self.dead: list[Proc] = []
        self.supervisor: Proc | None = None
        self.incarnation = 0
        self.kills: list[Kill] = []
        self.job_ids: list[str] = []
        heartbeat = args.heartbeat_s if args.heartbeat_s else args.lease_ttl_s / 4
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TRAIND_LEASE_TTL_S": str(args.lease_ttl_s),
            "TRAIND_HEARTBEAT_INTERVAL_S": str(heartbeat),
            "TRAIND_PROGRESS_INTERVAL_S": "0.1",  # the kill loop reads which batch a job is at
            "TRAIND_ALLOWED_MODULES": ALLOWED,
        }
        # The children get the URL and storage on their command line; stale values in the environment must not win.
        for k in ("TRAIND_REDIS_URL", "TRAIND_STORAGE_DIR"):
            self.env.pop(k, None)

    # -- processes -------------------------------------------------------------------------------------------------
    def start_redis(self) -> None:
        if not shutil.which("redis-server"):
            raise SystemExit("chaos: redis-server not found on PATH (install it, or pass --redis-url)")
        self.redis_srv = RedisServer(self.dir / "redis").start()
        self.url = self.redis_srv.url

    def _spawn(self, name: str, *args: str) -> Proc:
        log = self.logs / f"{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen([sys.executable, "-m", "daemon.cli", *args, "--redis-url", self.url, "--storage",
                                  str(self.storage)], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        return Proc(name, p, log)

    def spawn_worker(self) -> str:
        self.incarnation += 1
        wid = f"chaos-w{self.incarnation}"
        proc = self._spawn(wid, "worker", "--worker-id", wid)
        with self.lock:
            self.workers[wid] = proc
        return wid

    def spawn_supervisor(self) -> None:
        self.supervisor = self._spawn("supervisor", "supervise", "--interval-s", str(self.args.interval_s))

    def close(self) -> None:
        for p in [*self.workers.values(), *([self.supervisor] if self.supervisor else [])]:
            p.kill()
        if self.redis_srv is not None:
            self.redis_srv.stop()
        if self.tmpdir is not None and not self.args.keep:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- the run ---------------------------------------------------------------------------------------------------
    def wait(self, cond: Any, timeout: float, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v or time.monotonic() > deadline:
                return v
            time.sleep(interval)

    def run(self) -> dict[str, Any]:
        from jobs.client import Client  # jobs.* is light; TensorFlow only ever loads in the workers
        from jobs.settings import ClientSettings

        a = self.args
        if not self.url:
            self.start_redis()
        self.storage.mkdir(parents=True, exist_ok=True)
        self.client = Client(settings=ClientSettings(redis_url=self.url, storage_dir=str(self.storage),
                                                     allowed_modules=ALLOWED.split(",")))
        self.r, self.store = self.client.r, self.client.store
        self.spawn_supervisor()
        for _ in range(a.workers):
            self.spawn_worker()
        log(f"waiting for {a.workers} workers to import TensorFlow and register ...")
        if not self.wait(lambda: all(self.r.exists(f"traind:worker:{w}") for w in self.workers), a.deadline_s):
            raise SystemExit("chaos: workers did not register:\n" + self.tails())
        handles = self.client.submit_many([job_spec(i, a.epochs, a.samples, a.kills + 3, a.batch_delay_s)
                                           for i in range(a.jobs)])
        self.job_ids = [h.id for h in handles]
        log(f"submitted {len(self.job_ids)} jobs; injecting {a.kills} kills")
        sampler = Sampler(self.r, self.workers, self.job_ids, self.lock)
        sampler.start()
        deadline = time.monotonic() + a.deadline_s
        try:
            for n in range(1, a.kills + 1):
                k = self.kill_one(n, deadline)
                if k is None:
                    log(f"kill {n}: every job ended (or the deadline passed) before it; stopping the kills")
                    break
                self.kills.append(k)
                log(f"kill {n:2d}: {k.mode:9s} {k.worker} job {k.job} attempt {k.attempt} epoch {k.epoch} "
                    f"batch {k.batch}{' (' + k.trigger + ')' if k.trigger else ''}")
            self.wait(lambda: self.all_terminal(), max(0.0, deadline - time.monotonic()), 0.2)
        finally:
            sampler.stop()
        return self.analyse(sampler)

    def all_terminal(self) -> bool:
        pipe = self.r.pipeline(transaction=False)
        for jid in self.job_ids:
            pipe.hget(f"traind:job:{jid}", "state")
        return all(s in (b"succeeded", b"failed", b"cancelled") for s in pipe.execute())

    def busy_workers(self) -> list[tuple[str, str]]:
        """(worker id, job id) for live workers that the job record names as running it."""
        pipe = self.r.pipeline(transaction=False)
        for jid in self.job_ids:
            pipe.hmget(f"traind:job:{jid}", ["state", "worker"])
        out = []
        with self.lock:
            live = {w for w, p in self.workers.items() if p.alive}
        for jid, (state, worker) in zip(self.job_ids, pipe.execute()):
            if state == b"running" and worker and worker.decode() in live:
                out.append((worker.decode(), jid))
        return out

    def kill_one(self, n: int, deadline: float) -> Kill | None:
        """Wait a random moment, pick a random busy worker and SIGKILL its process group (then replace it)."""
        a = self.args
        time.sleep(self.rng.uniform(a.min_gap_s, a.max_gap_s))  # a random moment
        mode = "checkpoint" if self.rng.random() < 0.5 else "mid-epoch"
        while time.monotonic() < deadline:
            busy = self.wait(lambda: self.busy_workers() or self.all_terminal(),
                             max(0.0, deadline - time.monotonic()))
            if not isinstance(busy, list) or not busy:
                return None
            wid, jid = self.rng.choice(sorted(busy))
            trigger = self.checkpoint_moment(wid, jid) if mode == "checkpoint" else self.mid_epoch_moment(wid, jid)
            state, attempt, epoch, batch, worker = self.r.hmget(
                f"traind:job:{jid}", ["state", "attempt", "epoch", "batch", "worker"])
            if state != b"running" or worker != wid.encode():
                continue  # the job ended (or moved) while we waited for its checkpoint: choose again
            kill_ms = self.store.now_ms()
            with self.lock:
                proc = self.workers.pop(wid)
            proc.kill()
            self.dead.append(proc)
            self.spawn_worker()  # the replacement imports TensorFlow while the supervisor notices the loss
            return Kill(n=n, mode=mode, worker=wid, job=jid, kill_ms=kill_ms, state=state.decode(),
                        attempt=int(attempt or 0), epoch=int(epoch or 0), batch=int(batch or 0), trigger=trigger)
        return None

    def mid_epoch_moment(self, wid: str, jid: str, timeout_s: float = 5.0) -> str:
        """Return once the job is inside an epoch, at a random batch of its first two thirds (so the kill lands
        mid-epoch, not while the attempt is still loading its checkpoint). The batch comes from the job's progress,
        published every 0.1 s: a target near the epoch's end could be skipped over again and again."""
        steps = int(self.r.hget(f"traind:job:{jid}", "steps") or 0)
        target = self.rng.randint(1, max(1, steps * 2 // 3))
        end = time.monotonic() + timeout_s
        first: tuple[Any, Any] | None = None
        fresh = False  # progress written by this attempt (until its first write, the fields are its predecessor's)
        while time.monotonic() < end:
            e, running, batch, state, worker = self.r.hmget(
                f"traind:job:{jid}", ["epoch", "running_epoch", "batch", "state", "worker"])
            if state != b"running" or worker != wid.encode():
                return "job-moved"
            first = first or (running, batch)
            fresh = fresh or (running, batch) != first
            if fresh and running and int(running) == int(e or 0) + 1 and int(batch or 0) >= target:
                return f"batch>={target}"
            time.sleep(0.005)
        return "timeout"

    def checkpoint_moment(self, wid: str, jid: str, timeout_s: float = 20.0) -> str:
        """Return as soon as the job's checkpoint write is under way: a ``.tmp`` file in its checkpoint dir, or
        its epoch count changed (the epoch-end checkpoint is written right after that update)."""
        ckdir = self.storage / "jobs" / jid / "ckpt"
        e0 = int(self.r.hget(f"traind:job:{jid}", "epoch") or 0)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                if any(e.name.endswith(".tmp") for e in os.scandir(ckdir)):
                    return "tmp-file"
            except FileNotFoundError:
                pass
            e, state, worker = self.r.hmget(f"traind:job:{jid}", ["epoch", "state", "worker"])
            if int(e or 0) > e0:  # an epoch just ended (a resume that restarts lower is no checkpoint write)
                return "epoch-change"
            if state != b"running" or worker != wid.encode():
                return "job-moved"
            time.sleep(0.002)
        return "timeout"

    # -- analysis --------------------------------------------------------------------------------------------------
    def analyse(self, sampler: Sampler) -> dict[str, Any]:
        from jobs.contract.events import EventKind

        a = self.args
        per_job: list[dict[str, Any]] = []
        violations: list[str] = []
        bad_exports: list[str] = []
        events: dict[str, list[dict[str, Any]]] = {}
        for jid in self.job_ids:
            try:
                st = self.store.get(jid, with_history=True)
            except Exception:  # a missing record is a lost job
                per_job.append({"id": jid, "state": "missing", "lost": True})
                continue
            ev = self.store.events(jid)
            events[jid] = ev
            trained = sum(1 for e in ev if e.get("kind") == EventKind.EPOCH.value)
            final_epoch = int(st["epoch"] or 0)
            claims: dict[int, int] = {}
            for e in ev:
                if e.get("kind") == EventKind.TRAINING.value:
                    claims[int(e["attempt"])] = claims.get(int(e["attempt"]), 0) + 1
            for att, cnt in claims.items():
                if cnt > 1:
                    violations.append(f"job {jid}: attempt {att} was claimed {cnt} times")
            hist = [h["epoch"] for h in st["history"]]
            times = sorted(float(h.get("time_s") or 0) for h in st["history"])
            if st["state"] == "succeeded" and hist != list(range(1, final_epoch + 1)):
                violations.append(f"job {jid}: history epochs {hist} for {final_epoch} finished epochs")
            index = self.store.checkpoints(jid)
            atts = [index[k]["attempt"] for k in sorted(index)]
            if atts != sorted(atts):
                violations.append(f"job {jid}: checkpoint attempts {atts} decrease with the epoch")
            if st["state"] == "succeeded":
                bad_exports.extend(self._check_exports(jid, st))
            terminal = st["state"] in ("succeeded", "failed", "cancelled")
            per_job.append({"id": jid, "name": st.get("name"), "state": st["state"], "lost": not terminal,
                            "restarts": st["restarts"], "attempt": st["attempt"], "epoch": final_epoch,
                            "epochs_trained": trained, "epochs_redone": max(0, trained - final_epoch),
                            "epoch_s_median": times[len(times) // 2] if times else None,
                            "error": st.get("error")})
        for (jid, att), wids in sampler.attempt_workers.items():
            if len(wids) > 1:
                violations.append(f"job {jid}: attempt {att} was seen running on {sorted(wids)}")
        for o in sampler.overlaps:
            violations.append(f"job {o['job']}: live workers {o['workers']} reported it at the same time")
        for k in self.kills:
            self._kill_outcome(k, events.get(k.job, []))
        detect = [float(k.detect_ms) for k in self.kills if k.detect_ms is not None]
        counts = {s: sum(1 for j in per_job if j["state"] == s) for s in ("succeeded", "failed", "cancelled")}
        lost = sum(1 for j in per_job if j["lost"])
        summary: dict[str, Any] = {
            "command": "python -m bench.chaos " + shlex.join(self.argv),
            "git": git_state(),  # the commit measured, and whether tracked files differed from it
            "config": {"jobs": a.jobs, "workers": a.workers, "kills": a.kills, "seed": a.seed,
                       "lease_ttl_s": a.lease_ttl_s, "heartbeat_s": float(self.env["TRAIND_HEARTBEAT_INTERVAL_S"]),
                       "supervisor_interval_s": a.interval_s, "epochs": a.epochs, "samples": a.samples,
                       "deadline_s": a.deadline_s, "batch_delay_s": a.batch_delay_s},
            "duration_s": round(time.monotonic() - self.t0, 1),
            "jobs": {"total": len(self.job_ids), **counts, "lost": lost},
            "all_terminal": lost == 0,
            "kills_done": len(self.kills),
            "kills_by_mode": {m: sum(1 for k in self.kills if k.mode == m) for m in ("mid-epoch", "checkpoint")},
            "restarts_total": sum(int(j.get("restarts") or 0) for j in per_job),
            "detection_ms": {"n": len(detect), "p50": percentile(detect, 50), "p95": percentile(detect, 95),
                             "max": max(detect) if detect else None},
            "epochs_redone": sum(int(j.get("epochs_redone") or 0) for j in per_job),
            "epochs_redone_by_kills": sum(k.redone or 0 for k in self.kills),
            "batches_lost_mid_epoch": sum(k.batch for k in self.kills),
            "double_trained": bool(violations),
            "violations": violations,
            "export_mismatches": bad_exports,
            "sampler": {"samples": sampler.samples, "interval_s": sampler.interval_s},
            "kills": [asdict(k) for k in self.kills],
            "per_job": per_job,
        }
        summary["ok"] = (lost == 0 and not violations and not bad_exports and counts["succeeded"] == len(self.job_ids)
                         and len(self.kills) == a.kills)
        return summary

    def _check_exports(self, jid: str, st: dict[str, Any]) -> list[str]:
        """A succeeded job's best/final model files must match the sha256 its record holds (what load_model checks)."""
        from jobs.storage.base import sha256_file

        bad = []
        for name in ("best", "final"):
            exp = st.get(f"{name}_checkpoint")
            if isinstance(exp, str):
                exp = json.loads(exp)
            if not exp:
                if name == "final":
                    bad.append(f"job {jid}: no final model recorded")
                continue
            path = self.storage / "jobs" / jid / Path(exp["file"]).name
            if not path.exists() or sha256_file(path) != exp["sha256"]:
                bad.append(f"job {jid}: {exp['file']} does not match the sha256 in its record")
        return bad

    @staticmethod
    def _kill_outcome(k: Kill, events: list[dict[str, Any]]) -> None:
        """Match a kill with the requeue of the attempt it hit and with the next attempt's resume point."""
        from jobs.contract.events import EventKind

        nxt = k.attempt + 1
        for e in events:
            kind, attempt = e.get("kind"), e.get("attempt")
            if k.requeue_ms is None and kind == EventKind.REQUEUED.value and attempt == nxt:
                k.requeue_ms = int(e["ts"])
                k.detect_ms = k.requeue_ms - k.kill_ms
            if kind == EventKind.TRAINING.value and attempt == nxt:
                k.resumed_from = int(e["epoch"]) - 1
                k.redone = max(0, k.epoch - k.resumed_from)
        if k.requeue_ms is not None:
            k.outcome = "requeued"
        elif k.state != "running":
            k.outcome = f"job was {k.state}"
        else:
            k.outcome = "no requeue seen"

    def tails(self) -> str:
        out = []
        for p in [*self.workers.values(), *self.dead, *([self.supervisor] if self.supervisor else [])]:
            try:
                out.append(f"--- {p.name} ---\n" + "\n".join(p.log.read_text(errors="replace").splitlines()[-15:]))
            except OSError:
                pass
        return "\n".join(out)


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}"
    return str(v)


def render(s: dict[str, Any]) -> str:
    """The human summary: totals, then one row per kill."""
    c, j, d = s["config"], s["jobs"], s["detection_ms"]
    lines = [
        f"chaos: {c['jobs']} jobs x {c['epochs']} epochs, {c['workers']} workers, {s['kills_done']}/{c['kills']} kills "
        f"(seed {c['seed']}, lease TTL {c['lease_ttl_s']} s, heartbeat {c['heartbeat_s']} s, supervisor every "
        f"{c['supervisor_interval_s']} s) in {s['duration_s']} s",
        "",
        f"  jobs            {j['succeeded']} succeeded, {j['failed']} failed, {j['cancelled']} cancelled, "
        f"{j['lost']} lost (of {j['total']})",
        f"  all terminal    {'yes' if s['all_terminal'] else 'NO'}",
        f"  kills           {s['kills_by_mode']['mid-epoch']} mid-epoch, {s['kills_by_mode']['checkpoint']} at a "
        "checkpoint write",
        f"  restarts        {s['restarts_total']}",
        f"  detection (ms)  p50 {_fmt(d['p50'])}, p95 {_fmt(d['p95'])}, max {_fmt(d['max'])} (n={d['n']}; kill -> "
        "requeue, Redis clock)",
        f"  epochs redone   {s['epochs_redone']} (per job: trained - final); {s['epochs_redone_by_kills']} by the "
        f"kills (finished before the kill - resume epoch), plus ~{s['batches_lost_mid_epoch']} batches of the epochs "
        "the kills interrupted",
        f"  double-trained  {'YES' if s['double_trained'] else 'no'} ({s['sampler']['samples']} samples"
        f"{'; ' + '; '.join(s['violations'][:5]) if s['violations'] else ''})",
        f"  model files     {len(s['export_mismatches'])} best/final files not matching their recorded sha256",
        f"  result          {'OK' if s['ok'] else 'FAILED'}",
        "",
    ]
    cols = ["n", "mode", "trigger", "worker", "job", "attempt", "epoch", "batch", "detect_ms", "resumed_from",
            "redone", "outcome"]
    rows = [[_fmt(k.get(col)) for col in cols] for k in s["kills"]]
    widths = [max([len(col)] + [len(r[i]) for r in rows]) for i, col in enumerate(cols)]
    lines.append("  " + "  ".join(col.ljust(w) for col, w in zip(cols, widths)))
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10, help="jobs to submit (default 10)")
    p.add_argument("--workers", type=int, default=3, help="worker processes kept running (default 3)")
    p.add_argument("--kills", type=int, default=20, help="worker SIGKILLs to inject (default 20)")
    p.add_argument("--seed", type=int, default=1, help="seed of the kill schedule (default 1)")
    p.add_argument("--lease-ttl-s", type=float, default=2.0, help="TRAIND_LEASE_TTL_S of every process (default 2)")
    p.add_argument("--heartbeat-s", type=float, default=0.0, help="heartbeat interval (default: lease TTL / 4)")
    p.add_argument("--interval-s", type=float, default=0.5, help="supervisor pass interval (default 0.5)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per job (default 20)")
    p.add_argument("--samples", type=int, default=1600, help="samples per job (default 1600: 40 batches/epoch)")
    p.add_argument("--batch-delay-s", type=float, default=0.0,
                   help="each training batch also sleeps this long (bench.models:slow_mlp; default 0: "
                        "examples.regression at full speed)")
    p.add_argument("--min-gap-s", type=float, default=0.3, help="shortest random wait before a kill (default 0.3)")
    p.add_argument("--max-gap-s", type=float, default=2.0, help="longest random wait before a kill (default 2)")
    p.add_argument("--deadline-s", type=float, default=900.0, help="overall deadline for every job to end")
    p.add_argument("--redis-url", help="use this Redis instead of starting a redis-server (env TRAIND_REDIS_URL)")
    p.add_argument("--storage", help="checkpoint storage dir (default: in the scratch dir)")
    p.add_argument("--workdir", help="scratch dir for redis, storage and logs (default: a temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary scratch dir (logs) afterwards")
    p.add_argument("--json", metavar="PATH", help="write the summary as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the chaos scenario; 0 when every job succeeded, none was lost and no job was trained twice at once."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    for name in ("jobs", "workers", "kills", "epochs"):
        if getattr(args, name) < 1:
            raise SystemExit(f"chaos: --{name} must be >= 1")
    if args.lease_ttl_s <= 0.2:
        raise SystemExit("chaos: --lease-ttl-s must be > 0.2")
    chaos = Chaos(args, argv)
    try:
        summary = chaos.run()
    finally:
        tails = chaos.tails()
        chaos.close()
    print(render(summary), flush=True)
    if not summary["ok"]:
        print("\nlast lines of the process logs:\n" + tails, file=sys.stderr)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"summary written to {out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
