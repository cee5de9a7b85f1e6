"""Issue 22 item 1: the local stack keeps its port across restarts, and commands on its machine find it with no
``TRAIND_REDIS_URL`` (as docker finds its daemon)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from jobs.localstack import find
from tests.conftest import ROOT, Procs, log_of, wait_for


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}  # no export at all
    return {**env, **extra}


def _up(procs: Procs, env: dict[str, str]) -> subprocess.Popen[bytes]:
    up = procs.traind("up", "--workers", "0", "--grace-s", "5", env=env, name="up")
    wait_for(lambda: "Ctrl-C stops everything" in log_of(up) or up.poll() is not None, 60, "the stack to come up")
    assert up.poll() is None, log_of(up)
    return up


def _stop(up: subprocess.Popen[bytes]) -> None:
    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0, log_of(up)


def _traind(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_up_keeps_its_port_and_a_second_shell_finds_it(procs: Procs, tmp_path: Path) -> None:
    data = tmp_path / "traind"  # also the default storage dir of XDG_DATA_HOME=tmp_path (see `third`)
    env = _env(TRAIND_STORAGE_DIR=str(data), TRAIND_ALLOWED_MODULES="examples")
    up = _up(procs, env)
    url_file, state = tmp_path / "traind.redis" / "url", tmp_path / "traind.redis" / "stack.json"
    first = urlsplit(url_file.read_text().strip())
    assert json.loads(state.read_text())["storage"] == str(data)
    second = _traind(env, "up", "--workers", "0")  # one AOF directory, one redis-server
    assert second.returncode == 1 and "a local stack is already running on " in second.stderr, second.stderr
    # the same state directory with another storage (object storage keeps its state in the default place): refused too
    third = _traind({**env, "XDG_DATA_HOME": str(tmp_path)}, "up", "--workers", "0", "--storage", "s3://bucket/x")
    assert third.returncode == 1 and "a local stack is already running on " in third.stderr, third.stderr
    _stop(up)
    assert not state.exists() and url_file.exists()  # stopped: not found any more; the URL is kept for the restart

    up = _up(procs, env)
    again = urlsplit(url_file.read_text().strip())
    assert (again.port, again.password) == (first.port, first.password)  # an exported URL stays valid

    shell = _env(TRAIND_STORAGE_DIR=str(data))  # a second shell: no URL, no allowlist (the stack's is used)
    spec = ROOT / "examples" / "regression.yaml"
    res = _traind(shell, "submit", str(spec))
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    res = _traind(shell, "status", job_id)
    assert res.returncode == 0 and "queued" in res.stdout, res.stderr
    res = _traind(shell, "list", "--json")
    assert res.returncode == 0 and [j["id"] for j in json.loads(res.stdout)] == [job_id], res.stderr
    _stop(up)
    assert find(str(data)) is None  # a stopped stack is not found (commands fall back to the default URL)


def test_default_stack_needs_no_export_at_all(procs: Procs, tmp_path: Path) -> None:
    env = _env(XDG_DATA_HOME=str(tmp_path / "xdg"), TRAIND_ALLOWED_MODULES="examples")  # the default storage dir
    up = _up(procs, env)
    assert "from any shell on this machine, no export needed" in log_of(up), log_of(up)
    shell = _env(XDG_DATA_HOME=str(tmp_path / "xdg"))
    res = _traind(shell, "submit", str(ROOT / "examples" / "regression.yaml"))
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    res = _traind(shell, "list")
    assert res.returncode == 0 and job_id[:8] in res.stdout, res.stderr
    code = ("from jobs.client import Client; c = Client(); "
            f"print(c.job({job_id!r}).status()['state'], c.storage.url)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=shell, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.split() == ["queued", str(tmp_path / "xdg" / "traind")], res.stderr
    _stop(up)
