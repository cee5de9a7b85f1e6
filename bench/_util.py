"""Shared plumbing of the benchmarks: arguments, a private redis-server, worker processes, stats, tables, JSON.

Every benchmark is ``python -m bench.NAME [--smoke] [--json PATH]`` with a ``main(argv) -> int``; it starts its own
redis-server on a free port and its own worker processes, and writes its results (with the machine, the versions
and the load average it ran under) as JSON, by default to ``bench/results/NAME.json`` (``NAME.smoke.json`` with
``--smoke``: scratch, git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import redis

from testkit.cluster import RedisServer, git_state, percentile, wait_for

__all__ = ["RedisServer", "percentile", "wait_for"]  # the benchmarks use them as u.wait_for, u.percentile, ...
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ALLOWED = "examples,bench"  # the benchmarks' jobs reference bench.models


# -- arguments & output ----------------------------------------------------------------------------------------------
def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=(doc or "").split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (numbers meaningless)")
    p.add_argument("--json", metavar="PATH", help=f"where to write the results (default bench/results/{name}.json)")
    p.add_argument("--workdir", metavar="DIR", help="scratch dir for redis, storage and logs (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir")
    return p


def json_path(args: argparse.Namespace, name: str) -> Path:
    if args.json:
        return Path(args.json)
    return RESULTS / (f"{name}.smoke.json" if args.smoke else f"{name}.json")


class Run:
    """One benchmark run: scratch dir, environment record, results, JSON + table output."""

    def __init__(self, name: str, args: argparse.Namespace, argv: Sequence[str] | None) -> None:
        self.name, self.args = name, args
        self.argv = list(sys.argv[1:] if argv is None else argv)
        if args.workdir:
            self.dir = Path(args.workdir).resolve()
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.dir = Path(tempfile.mkdtemp(prefix=f"traind-bench-{name}-"))
        self.t0 = time.monotonic()
        self.env = environment()
        self.env["command"] = f"python -m bench.{name} " + " ".join(self.argv)
        self.env["smoke"] = bool(args.smoke)
        self.results: dict[str, Any] = {}
        self.tables: list[str] = []
        self._cleanups: list[Callable[[], None]] = []

    def on_exit(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def table(self, title: str, rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
        text = format_table(title, rows, cols)
        print(text, flush=True)
        self.tables.append(text)
        return text

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.tables.append(text)

    def finish(self) -> Path:
        self.env["load_after"] = loadavg()
        self.env["duration_s"] = round(time.monotonic() - self.t0, 1)
        self.env["busy_processes_after"] = busy_processes()
        out = json_path(self.args, self.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"benchmark": self.name, "environment": self.env, "results": self.results, "tables": self.tables}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=False, default=_json_default) + "\n")
        os.replace(tmp, out)
        print(f"\nresults written to {out}", flush=True)
        return out

    def close(self) -> None:
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception as e:  # cleanup is best effort, but say so
                print(f"cleanup error: {type(e).__name__}: {e}", file=sys.stderr)
        if not self.args.keep and not self.args.workdir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def format_table(title: str, rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [f"\n## {title}", line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def _numeric(v: str) -> bool:
    try:
        float(v.rstrip("x%s"))
        return True
    except ValueError:
        return False


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


# -- environment -----------------------------------------------------------------------------------------------------
def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def busy_processes() -> list[str]:
    """Other test suites / traind processes running now (they skew timings on a small machine)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    mine = {os.getpid(), os.getppid()}  # this run and whatever launched it (`timeout`, pytest)
    busy = []
    for line in out.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) < 3 or int(parts[0]) in mine:
            continue
        if any(k in parts[2] for k in ("pytest", "daemon.cli", "bench.")) and "ps -eo" not in parts[2]:
            busy.append(f"{parts[0]} {parts[1]}% {parts[2][:100]}")
    return busy


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def environment() -> dict[str, Any]:
    exe = shutil.which("redis-server")
    redis_v = None
    if exe:
        try:
            redis_v = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "mem_gib": _mem_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "redis", "rq",
                                              "pydantic", "psutil")},
        "redis_server": redis_v,
        "git": git_state(ROOT),  # the commit measured, and whether tracked files differed from it
        "load_before": loadavg(),
        "busy_processes_before": busy_processes(),
    }


# -- redis -----------------------------------------------------------------------------------------------------------
def start_redis(run: Run) -> RedisServer:
    """A private redis-server (no persistence) for the run; stopped when the run ends."""
    srv = RedisServer(run.dir / "redis").start()
    run.on_exit(srv.stop)
    return srv


def client_settings(url: str, storage: Path) -> Any:
    from jobs.settings import ClientSettings

    return ClientSettings(redis_url=url, storage_dir=storage, allowed_modules=ALLOWED.split(","))


def worker_settings(url: str, storage: Path, **kw: Any) -> Any:
    from jobs.settings import WorkerSettings

    return WorkerSettings(redis_url=url, storage_dir=storage, allowed_modules=ALLOWED.split(","), **kw)


# -- processes -------------------------------------------------------------------------------------------------------
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    env.update({"PYTHONPATH": str(ROOT), "TRAIND_ALLOWED_MODULES": ALLOWED, "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update(extra or {})
    return env


class Procs:
    """Child processes (each in its own session, so a kill takes its whole tree); all killed on close."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str] | None = None, name: str = "proc"
              ) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")  # owned by the child
        p = subprocess.Popen(args, cwd=ROOT, env=child_env(env), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        log.close()
        p.log_path = str(self.logdir / f"{name}-{len(self.procs)}.log")  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def traind(self, *args: str, env: dict[str, str] | None = None, name: str = "traind") -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", "daemon.cli", *args], env=env, name=name)

    def worker(self, url: str, storage: Path, env: dict[str, str] | None = None, name: str = "worker"
               ) -> subprocess.Popen[bytes]:
        return self.traind("worker", "--redis-url", url, "--storage", str(storage), env=env, name=name)

    def supervisor(self, url: str, storage: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.traind("supervise", "--redis-url", url, "--storage", str(storage), env=env, name="supervisor")

    @staticmethod
    def kill(p: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal the child's whole session: its process group and any group a descendant made for itself
        (RQ's work-horse calls ``setpgrp()``, so killing the worker's group alone leaves it running)."""
        if getattr(p, "session_killed", False):
            return  # its pid may have been reused since: never signal it again
        kill_session(p.pid, sig)
        if sig == signal.SIGKILL:
            p.session_killed = True  # type: ignore[attr-defined]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None or not getattr(p, "session_killed", False):
                self.kill(p)  # also when the leader exited: its descendants may still hold the session
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process of session ``sid`` (the session leader's process group first)."""
    try:
        os.killpg(sid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass


def log_tail(p: subprocess.Popen[bytes], n: int = 30) -> str:
    try:
        lines = Path(p.log_path).read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def registered_worker(r: redis.Redis, pid: int) -> str | None:
    """The traind worker id registered by process ``pid`` (its TensorFlow is imported by then), or None."""
    from jobs.contract import keys
    for wid in r.zrange(keys.WORKERS, 0, -1):
        w = wid.decode()
        if r.hget(keys.worker(w), "pid") == str(pid).encode():
            return w
    return None


def wait_warm(r: redis.Redis, p: subprocess.Popen[bytes], timeout: float = 180.0) -> str:
    """Wait until worker process ``p`` registered (TensorFlow imported, loop running); returns its id."""
    deadline = time.monotonic() + timeout
    while True:
        wid = registered_worker(r, p.pid)
        if wid:
            return wid
        if p.poll() is not None:
            raise RuntimeError(f"worker {p.pid} exited with {p.returncode}:\n{log_tail(p)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker {p.pid} not registered after {timeout} s:\n{log_tail(p)}")
        time.sleep(0.05)


class Stack(NamedTuple):
    """What most benchmarks start with: a fresh Redis URL, a storage dir, their process registry, a client."""

    url: str
    storage: Path
    procs: Procs
    client: Any


def start_stack(run: Run) -> Stack:
    """A fresh redis-server and client for one benchmark; its worker/supervisor processes are closed at exit."""
    from jobs.client import Client

    srv = start_redis(run)
    storage = run.dir / "storage"
    procs = Procs(run.dir / "logs")
    run.on_exit(procs.close)
    return Stack(srv.url, storage, procs, Client(settings=client_settings(srv.url, storage)))


class Pool:
    """Worker subprocesses of one benchmark; finds the one running a job through the worker registry."""

    def __init__(self, procs: Procs, r: Any, url: str, storage: Path, env: dict[str, str] | None = None) -> None:
        self.procs, self.r, self.url, self.storage, self.env = procs, r, url, storage, env
        self.alive: list[Any] = []

    def spawn(self, name: str = "worker") -> Any:
        p = self.procs.worker(self.url, self.storage, env=self.env, name=name)
        self.alive.append(p)
        return p

    def wait_warm(self, p: Any, timeout: float = 300) -> str:
        return wait_warm(self.r, p, timeout)

    def runner(self, job_id: str) -> Any:
        """The Popen of the worker that holds ``job_id`` now, or None."""
        from jobs.contract import keys
        wid = self.r.hget(keys.job(job_id), "worker")
        if not wid:
            return None
        pid = self.r.hget(keys.worker(wid.decode()), "pid")
        for p in self.alive:
            if pid is not None and str(p.pid).encode() == pid:
                return p
        return None

    def kill(self, p: Any) -> None:
        Procs.kill(p)
        p.wait(30)
        self.alive.remove(p)


def wait_running(r: Any, job_id: str, attempt: int, timeout: float = 300) -> dict[str, str]:
    """Wait until ``attempt`` of the job runs and has published batch progress; returns the job fields."""
    from jobs.contract import keys
    f = ["state", "attempt", "batch", "running_epoch", "epoch", "started_at", "worker", "steps"]

    def ok() -> dict[str, str] | None:
        vals = dict(zip(f, (v.decode() if v else "" for v in r.hmget(keys.job(job_id), f))))
        if vals["state"] in ("failed", "cancelled", "succeeded"):
            raise RuntimeError(f"job {job_id} ended: {vals}")
        if vals["state"] == "running" and vals["attempt"] == str(attempt) and int(vals["batch"] or 0) > 0:
            return vals
        return None

    return wait_for(ok, timeout, f"attempt {attempt} of {job_id} training", 0.01)


def requeue_now(store: Any, job_id: str, attempt: int, reason: str = "bench: worker killed") -> int:
    """What the supervisor does for a lost attempt, without waiting for its lease to expire (the killed worker's
    lease would otherwise hold the job for up to lease_ttl_s). Returns ``requeued_at`` (Redis clock, ms)."""
    from jobs.contract.events import EventKind
    from jobs.redis.delivery import requeue

    rec = store.raw(job_id)
    return requeue(store, job_id, attempt=attempt, queue=rec["queue"], kind=EventKind.REQUEUED,
                   msg=f"{reason}; requeued as attempt {attempt + 1}",
                   fields={"restarts": int(rec.get("restarts") or 0) + 1, "reason": reason})


# -- stats -----------------------------------------------------------------------------------------------------------
def summary(xs: Iterable[float], digits: int = 4) -> dict[str, Any]:
    s = [float(x) for x in xs]
    if not s:
        return {"n": 0}
    r = lambda v: None if v is None else round(v, digits)  # noqa: E731
    return {"n": len(s), "median": r(statistics.median(s)), "p95": r(percentile(s, 95)), "min": r(min(s)),
            "max": r(max(s)), "mean": r(statistics.fmean(s))}


def median(xs: Iterable[float]) -> float | None:
    s = list(xs)
    return statistics.median(s) if s else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b in (None, 0):
        return None
    return round(a / b, 4)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main_wrapper(name: str, doc: str | None, argv: Sequence[str] | None,
                 body: Callable[[Run], None], add_args: Callable[[argparse.ArgumentParser], None] | None = None
                 ) -> int:
    """Parse arguments, run ``body(run)``, always clean up, write the JSON."""
    p = parser(name, doc)
    if add_args:
        add_args(p)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # `timeout` / kill: still stop our children in `finally`
    run = Run(name, args, argv)
    if run.env["load_before"] and run.env["load_before"][0] > 0.8:
        print(f"note: load average {run.env['load_before']} (> 0.8): timings will be noisy", flush=True)
    try:
        body(run)
        run.finish()
    finally:
        run.close()
    return 0
