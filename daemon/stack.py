"""``traind up``: a local stack of an embedded Redis (AOF), one supervisor and N workers as child processes.

Children get the Redis URL through the environment (``TRAIND_REDIS_URL``), never argv, so a password does not show
in ``ps``; the embedded Redis reads its password from a 0600 config file for the same reason. Its directory (AOF,
config, URL file) is ``<storage>.redis`` next to the storage root, outside the tree jobs write. Crashed children are
restarted with backoff: a worker forever (a job that kills its worker is the supervisor's to fail after
``max_restarts``, never a reason to stop the stack), the supervisor and Redis until they crash-loop. On stop,
workers get SIGTERM first (they may still write to Redis), then the supervisor, then Redis, each escalated to
SIGKILL after a grace period.

>>> # with Stack(StackSettings(workers=2), out=sys.stdout) as stack:
>>> #     stack.wait()   # until Ctrl-C
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TextIO
from urllib.parse import urlsplit

import redis

from jobs import localstack
from jobs.errors import ConfigError, TraindError
from jobs.redis.conn import redact_url
from jobs.settings import StackSettings

REDIS_HINT = (
    "redis-server was not found on PATH; install it: apt-get install redis-server / brew install redis "
    "(or point traind at an existing server with --redis-url / TRAIND_REDIS_URL)"
)
ROOT = Path(__file__).resolve().parents[1]  # the directory holding the daemon/, jobs/, worker/ packages
_CRASH_LOOP = 3  # consecutive quick crashes of the supervisor or Redis after which `check()` gives up
_WORKER_BACKOFF_MAX_S = 30.0
EXAMPLE_MODULES = ["examples.regression"]  # what `traind up --example` runs; allowed for that command only
_QUICK_S = 60.0  # a child that ran longer than this before exiting was not crash-looping


class StackError(TraindError):
    """A process of the local stack could not be started or keeps crashing."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    # Linux only: children get SIGTERM if `traind up` itself is killed, so nothing is left running unowned.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def log_tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class Child:
    """One supervised child process."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_crashes: int = 0
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only `traind up`, which stops children in order
                preexec_fn=_die_with_parent,  # single-threaded here; prctl only
            )
        self.started = time.monotonic()
        self.restart_at = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive and self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def stop_children(children: list[Child], grace_s: float) -> None:
    """SIGTERM every child, wait up to ``grace_s``, then SIGKILL the rest (a second Ctrl-C kills at once)."""
    for c in children:
        c.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        while any(c.alive for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    for c in children:
        if c.alive:
            c.signal(signal.SIGKILL)
        if c.proc is not None:
            try:
                c.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


class EmbeddedRedis:
    """A private ``redis-server`` with AOF (appendfsync everysec) and a random password, bound to 127.0.0.1."""

    def __init__(self, workdir: Path, port: int = 0) -> None:
        exe = shutil.which("redis-server")
        if not exe:
            raise ConfigError(REDIS_HINT)
        self.dir = workdir
        self.port = port
        self.password = secrets.token_hex(16)
        if not port and (last := localstack.recorded_url(workdir)) is not None:
            # The last stack's port and password, when the port is free: a URL exported earlier stays valid.
            parts = urlsplit(last)
            if parts.port and port_is_free(parts.port) and parts.password:
                self.port, self.password = parts.port, parts.password
        self.port = self.port or free_port()
        self.conf = self.dir / "redis.conf"
        self.child = Child("redis", [exe, str(self.conf)], self.dir / "redis.log", dict(os.environ))

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        localstack.write_private(self.conf, "\n".join([
            f"port {self.port}", "bind 127.0.0.1", f'dir "{self.dir}"', "appendonly yes", "appendfsync everysec",
            'save ""', f"requirepass {self.password}", 'logfile "redis.log"', "daemonize no", "",
        ]))
        self.child.start()
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError) as e:
                if not self.child.alive or time.monotonic() > deadline:
                    stop_children([self.child], 1)
                    raise StackError(f"embedded redis-server did not start on port {self.port}:\n"
                                     f"{log_tail(self.child.log)}") from e
                time.sleep(0.05)
            finally:
                client.close()


def check_worker_runtime() -> None:
    """Refuse early (instead of a crash loop) when the worker cannot be imported."""
    if importlib.util.find_spec("tensorflow") is None:
        raise ConfigError("TensorFlow is not installed, so workers cannot train: pip install -e '.[tf]' "
                          "(or: pip install tensorflow-cpu)")
    try:
        found = importlib.util.find_spec("worker.runner") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError("the traind worker package (worker.runner) is not installed: pip install -e .")


class Stack:
    """Embedded Redis (unless ``redis_url`` is given), a supervisor and ``settings.workers`` workers."""

    def __init__(self, settings: StackSettings, out: TextIO, grace_s: float = 20.0) -> None:
        self.settings = settings
        self.out = out
        self.grace_s = grace_s
        # Checkpoints go to the storage location (a path or s3://...); the embedded Redis and the logs need a local
        # directory: the storage dir itself when it is local, else the default local data dir.
        self.storage = settings.storage_dir
        self.home = localstack.local_root(self.storage)
        self.redis: EmbeddedRedis | None = None
        self.url = settings.redis_url or ""
        self.children: list[Child] = []
        self._recorded = False  # this process wrote the state commands find the stack by

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def redis_dir(self) -> Path:
        """The embedded Redis' AOF, config and URL file: next to the local storage root, never inside it (a job's
        files are confined to the root; nothing a job names can reach the database or its password)."""
        return localstack.state_dir(self.storage)

    @property
    def url_file(self) -> Path:
        return self.redis_dir / localstack.URL_FILE

    def start(self) -> None:
        if self.settings.redis_url is None:
            if (running := localstack.running(self.redis_dir)) is not None:
                # Two redis-servers on one AOF directory would corrupt it.
                raise StackError(f"a local stack is already running on {self.redis_dir} (traind up, pid {running.pid}, "
                                 f"{redact_url(running.url)}); use it (commands on this machine find it) or stop it "
                                 "first")
            self.redis = EmbeddedRedis(self.redis_dir, self.settings.redis_port)  # ConfigError if missing
        if self.settings.workers:
            check_worker_runtime()
        self.home.mkdir(parents=True, exist_ok=True)
        if self.redis is not None:
            self.redis.start()
            self.url = self.redis.url
            localstack.record(self.redis_dir, url=self.url, storage=self.storage,
                              allowed_modules=list(self.settings.allowed_modules))
            self._recorded = True
        env = {**os.environ, "TRAIND_REDIS_URL": self.url, "TRAIND_STORAGE_DIR": str(self.storage),
               "TRAIND_ALLOWED_MODULES": ",".join(self.settings.allowed_modules)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logs = self.home / "logs"
        cli = [sys.executable, "-m", "daemon.cli"]
        self.children.append(Child("supervisor", [*cli, "supervise"], logs / "supervisor.log", env))
        for i in range(self.settings.workers):
            self.children.append(Child(f"worker-{i}", [*cli, "worker"], logs / f"worker-{i}.log", env))
        for c in self.children:
            c.start()
        self.describe()

    def describe(self) -> None:
        w = self.out.write
        w("traind local stack\n")
        if self.redis is not None:
            w(f"  redis       {redact_url(self.url)} (embedded, AOF in {self.redis.dir}, log {self.redis.child.log})\n")
        else:
            w(f"  redis       {redact_url(self.url)}\n")
        w(f"  storage     {self.storage}\n")
        for c in self.children:
            pid = c.proc.pid if c.proc is not None else "-"
            w(f"  {c.name:<11} pid {pid}, log {c.log}\n")
        if self.redis is not None:
            # Commands on this machine find the stack by its state next to the storage root (jobs/localstack.py):
            # nothing to export for the default root, only the root itself otherwise.
            default = localstack.state_dir(None) == self.redis_dir
            w("  use it:     from any shell on this machine, " + (
                "no export needed" if default else f"with only TRAIND_STORAGE_DIR={self.storage} exported")
              + ": traind submit examples/regression.yaml; traind list\n")
            w(f"  url file    {self.url_file} (0600, holds the password; port and password stay across restarts)\n")
        if not self.settings.allowed_modules:
            w("  allowlist   empty: jobs can run no code; start with TRAIND_ALLOWED_MODULES=<your package> "
              "(examples.regression to try)\n")
        self.out.flush()

    def check(self) -> None:
        """Restart children that exited; raise StackError when one keeps crashing right after its start."""
        now = time.monotonic()
        procs = self.children + ([self.redis.child] if self.redis is not None else [])
        for c in procs:
            if c.proc is None or c.alive:
                continue
            if c.restart_at is None:
                code = c.proc.returncode
                c.exits.append(code)
                c.quick_crashes = c.quick_crashes + 1 if now - c.started < _QUICK_S else 1
                worker = c.name.startswith("worker")
                if c.quick_crashes >= _CRASH_LOOP and not worker:
                    raise StackError(f"{c.name} exited {c.quick_crashes} times in a row (last code {code}); "
                                     f"last lines of {c.log}:\n{log_tail(c.log)}")
                # A worker killed by its job (SIGKILL, OOM, segfault) comes back: the supervisor requeues the job
                # and fails it after max_restarts. Stopping the stack (Redis included) would punish every job.
                delay = min(2.0 ** (c.quick_crashes - 1), _WORKER_BACKOFF_MAX_S) if worker else min(
                    2.0 ** c.quick_crashes, 30.0)
                c.restart_at = now + delay
                again = f" ({c.quick_crashes} quick exits in a row)" if c.quick_crashes > 1 else ""
                self.out.write(f"{c.name} exited with code {code}{again}; restarting in {delay:.0f} s "
                               f"(log: {c.log})\n")
                self.out.flush()
            elif now >= c.restart_at:
                if self.redis is not None and c is self.redis.child:
                    self.redis.start()  # same port, password and AOF directory: the data comes back
                else:
                    c.start()

    def wait(self, interval_s: float = 0.5) -> None:
        """Keep the stack running until KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the CLI)."""
        while True:
            self.check()
            time.sleep(interval_s)

    def stop(self) -> None:
        """Workers first (they may still write to Redis), then the supervisor, then Redis."""
        workers = [c for c in self.children if c.name.startswith("worker")]
        others = [c for c in self.children if c not in workers]
        if any(c.alive for c in self.children) or (self.redis is not None and self.redis.child.alive):
            self.out.write("stopping the stack ...\n")
            self.out.flush()
        stop_children(workers, self.grace_s)
        stop_children(others, self.grace_s)
        if self.redis is not None:
            stop_children([self.redis.child], self.grace_s)
        if self._recorded:
            localstack.forget(self.redis_dir)
            self._recorded = False
