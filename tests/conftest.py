"""Shared fixtures: a real redis-server per session (flushed per test), storage dirs, worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from testkit.cluster import RedisServer
from testkit.cluster import wait_for as wait_for  # re-exported: tests import it from here

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = "examples,tests.models"

# The suite's own processes read these; set before any traind settings object is created.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TRAIND_ALLOWED_MODULES"] = ALLOWED
for _k in list(os.environ):
    if _k.startswith("TRAIND_") and _k not in ("TRAIND_ALLOWED_MODULES",):
        del os.environ[_k]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> str:
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    return redis_server.url


@pytest.fixture()
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture()
def storage_dir(tmp_path: Path) -> Path:
    d = tmp_path / "storage"
    d.mkdir()
    return d


class Procs:
    """Child processes started by a test; all killed (whole groups) at teardown."""

    def __init__(self, logdir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = logdir

    def traind(self, *args: str, env: dict[str, str] | None = None, name: str = "proc") -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")  # closed with the process
        p = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        p.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def worker(self, redis_url: str, storage: Path, *extra: str, env: dict[str, str] | None = None,
               name: str = "worker") -> subprocess.Popen[bytes]:
        return self.traind("worker", "--redis-url", redis_url, "--storage", str(storage), *extra, env=env, name=name)

    def supervisor(self, redis_url: str, storage: Path, *extra: str, env: dict[str, str] | None = None
                   ) -> subprocess.Popen[bytes]:
        return self.traind("supervise", "--redis-url", redis_url, "--storage", str(storage), *extra, env=env,
                           name="supervisor")

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)


@pytest.fixture()
def procs(tmp_path: Path) -> Iterator[Procs]:
    pr = Procs(tmp_path)
    yield pr
    pr.kill_all()


def log_of(p: subprocess.Popen[bytes]) -> str:
    try:
        return Path(p.log_path).read_text(errors="replace")[-4000:]  # type: ignore[attr-defined]
    except OSError:
        return ""
