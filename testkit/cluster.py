"""One small helper for everything that starts a throw-away cluster: tests, benchmarks (bench/) and the chaos run.

Not part of the product (the wheel ships jobs/, worker/, daemon/, examples/ only): a real ``redis-server`` on a free
port, waiting on a condition with a deadline, one meaning of "percentile", and the git state a result was made from.

>>> percentile([1.0, 2.0, 3.0, 4.0], 50)
2.5
>>> # with RedisServer(tmp_dir).start() as srv: ...   # srv.url -> redis://127.0.0.1:<port>/0
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import redis

from daemon.stack import free_port  # the product's own (`traind up` needs one): one definition, not four

__all__ = ["RedisServer", "WaitTimeout", "free_port", "git_state", "percentile", "wait_for"]

ROOT = Path(__file__).resolve().parents[1]  # the repository: jobs/, worker/, daemon/, bench/, tests/, testkit/
T = TypeVar("T")


class WaitTimeout(AssertionError):
    """:func:`wait_for` ran out of time (an AssertionError: in a test it reads as the failure it is)."""


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``cond`` until it returns something truthy, and return that; raise WaitTimeout naming ``what`` after
    ``timeout`` seconds. Never a blind sleep: the caller says what it waits for and how long at most."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def percentile(xs: Iterable[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100, numpy's default method) of ``xs``; None when empty."""
    s = sorted(float(x) for x in xs)
    if not s:
        return None
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """``{"commit": <40 hex or None>, "dirty": bool or None}`` of the checkout ``root`` (what a result came from);
    tracked files only decide ``dirty``."""
    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip() if commit else None, "dirty": None if status is None else bool(status.strip())}


class RedisServer:
    """A ``redis-server`` child process on a free port of 127.0.0.1, data in ``workdir``.

    ``aof=True`` keeps an append-only file (fsync every second), so :meth:`restart` after a SIGKILL loses no
    acknowledged write; ``password`` sets ``requirepass``. Without AOF nothing is persisted.
    """

    def __init__(self, workdir: Path, aof: bool = False, password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server not found on PATH: install it (apt-get install redis-server)")
        self.exe = exe
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.aof = aof
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> RedisServer:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.BusyLoadingError):
                return False

        wait_for(up, timeout_s, f"redis-server to accept connections on port {self.port}")
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self, kill: bool = True) -> None:
        """Stop (SIGKILL by default) and start again on the same port, from the AOF when there is one."""
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> RedisServer:
        return self if self.proc is not None else self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
