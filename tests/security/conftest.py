"""Fixtures of the security suite (``redis_url``, ``r``, ``storage_dir`` come from tests/conftest.py)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.client import Client
from tests.conftest import Procs
from tests.security.helpers import MARKER_ENV, WORKER_LOG
from tests.security.serve_helpers import ServeProcess, start_serve

EVIL_MODULES = ("tests.security.evil_mod",)


@pytest.fixture()
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A path that planted code would create if it ever ran (imports, pickles, lambdas, subprocesses)."""
    path = tmp_path / "PWNED"
    monkeypatch.setenv(MARKER_ENV, str(path))
    yield path


@pytest.fixture()
def client(redis_url: str, storage_dir: Path) -> Client:
    """A client with the suite's allowlist (TRAIND_ALLOWED_MODULES=examples,tests.models)."""
    return Client(redis_url=redis_url, storage=storage_dir)


@pytest.fixture()
def worker_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Worker log records at INFO and above."""
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    return caplog


@pytest.fixture(autouse=True)
def _evil_module_never_imported() -> Iterator[None]:
    """Every test in this suite: the non-allowlisted evil module must never be imported into this process."""
    for name in EVIL_MODULES:
        sys.modules.pop(name, None)
    yield
    leaked = [m for m in EVIL_MODULES if m in sys.modules]
    assert not leaked, f"non-allowlisted module(s) {leaked} were imported"


@pytest.fixture()
def serve_proc(procs: Procs, redis_url: str, storage_dir: Path) -> ServeProcess:
    """A real ``traind serve`` process (tokens of tests/security/serve_helpers.py) on a free port."""
    return start_serve(procs, redis_url, storage_dir)
