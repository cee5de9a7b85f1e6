"""Issue 8.5, 8.6, 8.9: the supervisor survives bad entries; URL mistakes never show the password; a read-only
ACL user can list, show and watch jobs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.contract.states import JobState
from jobs.redis.store import JobStore
from testkit.cluster import RedisServer
from tests.conftest import ROOT, Procs, log_of, wait_for
from tests.security.helpers import good_spec, plant_job, record, run_burst
from tests.security.test_redis_access import ACL_PASSWORDS, acl_server  # noqa: F401 - fixture

BAD = b"\xff\xfebad"  # not UTF-8, so not a job id


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


# -- 8.5 ------------------------------------------------------------------------------------------------------------
def test_bad_entries_do_not_stop_the_supervisor(r: redis.Redis, redis_url: str, storage_dir: Path,
                                                 procs: Procs) -> None:
    """Undecodable members in leases, pending and workers, and a job key of the wrong type: each is logged and
    skipped (the undecodable ones removed: no job can have such an id); the dead worker's job is still requeued."""
    jid = plant_job(r, good_spec("orphan"), send_message=False)
    r.hset(keys.job(jid), "max_restarts", 3)
    JobStore(r).transition(jid, JobState.RUNNING, attempt=1, fields={"token": "t" * 32, "worker": "gone"},
                           lease_ttl_ms=1)  # its worker died: the lease is already expired
    r.zadd(keys.LEASES, {BAD: 0, "wrongtype1": 0})
    r.set(keys.job("wrongtype1"), "a string, not a hash")
    r.zadd(keys.PENDING, {BAD: 0})
    r.zadd(keys.WORKERS, {BAD: 0})
    sup = procs.supervisor(redis_url, storage_dir, env={"TRAIND_LEASE_TTL_S": "1", "TRAIND_WORKER_STALE_S": "1"})
    wait_for(lambda: record(r, jid)["state"] == "requeued" or sup.poll() is not None, 60, "the job to be requeued")
    wait_for(lambda: all(r.zscore(z, BAD) is None for z in (keys.LEASES, keys.PENDING, keys.WORKERS)), 30,
             "the undecodable members to be removed")
    wait_for(lambda: "job wrongtype1: cannot handle its expired lease" in log_of(sup), 30, "the WRONGTYPE entry")
    assert sup.poll() is None, log_of(sup)
    log = log_of(sup)
    assert f"traind:leases: member {BAD!r} is not a job id; removing it" in log, log
    assert "UnicodeDecodeError" not in log and "supervisor step failed" not in log, log
    assert record(r, jid)["attempt"] == 2


# -- 8.6 ------------------------------------------------------------------------------------------------------------
SECRET_PW = "Zq9/Xv8#Wk?Lm3"  # '/', '#' and '?' as base64 and generated passwords have them


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET_PW}@127.0.0.1:6399/0",
    "redis://:Zq9/Xv8Wk@127.0.0.1:6399/0",
    "redis://:Zq9Xv8#Wk@127.0.0.1:6399/0",
    "redis://:Zq9Xv8Wk@127.0.0.1:63x9/0",
])
@pytest.mark.parametrize("command", ["list", "worker"])
def test_url_mistakes_are_one_line_without_the_password(url: str, command: str) -> None:
    res = _cli(command, env={"TRAIND_REDIS_URL": url})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TRAIND_REDIS_URL redis://"), res.stderr
    assert "is not a valid URL" in lines[0] and "percent-encode" in lines[0], res.stderr
    for fragment in ("Zq9", "Xv8", "Wk", "Lm3"):
        assert fragment not in res.stderr + res.stdout, res.stderr


def test_a_percent_encoded_password_works(tmp_path: Path, storage_dir: Path) -> None:
    srv = RedisServer(tmp_path / "redis-pw").start()
    try:
        redis.Redis(port=srv.port).config_set("requirepass", SECRET_PW)
        url = f"redis://:{quote(SECRET_PW, safe='')}@127.0.0.1:{srv.port}/0"
        res = _cli("list", env={"TRAIND_REDIS_URL": url})
        assert res.returncode == 0 and res.stdout.strip() == "no jobs", res.stderr
    finally:
        srv.stop()


# -- 8.9 ------------------------------------------------------------------------------------------------------------
def test_read_only_user_lists_shows_and_watches(acl_server: RedisServer, storage_dir: Path) -> None:  # noqa: F811
    base = f"127.0.0.1:{acl_server.port}/0"
    submit_url = f"redis://traind-submit:{ACL_PASSWORDS['SUBMIT_PASSWORD']}@{base}"
    worker_url = f"redis://traind-worker:{ACL_PASSWORDS['WORKER_PASSWORD']}@{base}"
    ro_url = f"redis://traind-readonly:{ACL_PASSWORDS['READONLY_PASSWORD']}@{base}"
    job = Client(redis_url=submit_url, storage=storage_dir).submit(good_spec("ro"))
    run_burst(worker_url, storage_dir)
    env = {"TRAIND_REDIS_URL": ro_url, "TRAIND_STORAGE_DIR": str(storage_dir)}
    for args in (["list"], ["list", "--json"], ["status", job.id], ["watch", job.id], ["logs", job.id]):
        res = _cli(*args, env=env)
        assert res.returncode == 0, (args, res.stderr)
        assert "Traceback" not in res.stderr and job.id[:8] in res.stdout + res.stderr or args == ["logs", job.id], args
    listed = _cli("list", env=env).stdout
    assert job.id[:8] in listed and "succeeded" in listed  # `list` shows the short handle (issue 22 item 3)
    res = _cli("submit", str(ROOT / "examples" / "regression.yaml"), env={**env, "TRAIND_ALLOWED_MODULES": "examples"})
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Redis refused this user the command: "), res.stderr
    assert "no permissions to run the 'evalsha' command" in lines[0], res.stderr
