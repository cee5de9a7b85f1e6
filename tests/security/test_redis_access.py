"""Issue 5.4: Redis access. Passwords work end to end and never show up in logs, records, events or errors;
a wrong password fails fast; TLS (rediss://) works with certificate verification when redis-server supports it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.client import Client
from jobs.redis.conn import connect, redact_url
from testkit.cluster import RedisServer, free_port
from tests.conftest import wait_for
from tests.security.helpers import all_redis_text, good_spec, make_worker, run_burst

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://bob:s3cret@h/0", "redis://bob:***@h/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("rediss://:pw@[::1]:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem",
         "rediss://:***@[::1]:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem"),
        ("redis://h/0?password=s3cret&db=1", "redis://h/0?password=***&db=1"),
        ("rediss://h/0?ssl_certfile=/c.pem&ssl_password=s3cret", "rediss://h/0?ssl_certfile=/c.pem&ssl_password=***"),
        ("redis://:p%40ss@h/0", "redis://:***@h/0"),
        ("redis://:p@ss@h/0", "redis://:***@h/0"),
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("", ""),
        (None, "None"),
    ],
)
def test_redact_url(url: str | None, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=SECRET).start()
    yield srv
    srv.stop()


@pytest.fixture()
def auth_url(auth_server: RedisServer) -> str:
    redis.Redis.from_url(auth_server.url).flushall()
    return auth_server.url


def test_password_end_to_end_never_leaks(
    auth_url: str, storage_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Client and in-process worker over a password-protected Redis; the password appears nowhere."""
    caplog.set_level(logging.DEBUG)
    client = Client(redis_url=auth_url, storage=storage_dir)
    job = client.submit(good_spec("auth"))
    w = run_burst(auth_url, storage_dir)
    st = job.status(with_history=True)
    assert st["state"] == "succeeded", st.get("error")
    assert f"via redis://:***@127.0.0.1:{auth_url.rsplit(':', 1)[1]}" in caplog.text  # the worker's startup line
    r = redis.Redis.from_url(auth_url)
    places = {
        "status": json.dumps(st, default=str), "events": json.dumps(job.events()), "list": json.dumps(client.list()),
        "worker log": caplog.text, "redis keys and values": all_redis_text(r), "worker repr": repr(w.r),
    }
    for where, text in places.items():
        assert SECRET not in text, f"the Redis password leaked into {where}"


@pytest.mark.parametrize("url_auth", [":N0t-The-Pa55@", "bob:N0t-The-Pa55@", ""])
def test_wrong_password_fails_fast_without_leaking(auth_server: RedisServer, url_auth: str) -> None:
    """A refused password is not retried for ~30 s like a dropped connection, and its error shows no secret."""
    url = f"redis://{url_auth}127.0.0.1:{auth_server.port}/0"
    t0 = time.monotonic()
    with pytest.raises(redis.AuthenticationError) as ei:
        Client(redis_url=url, storage="/nonexistent").submit(good_spec("denied"))
    assert time.monotonic() - t0 < 5, "authentication failures must not be retried with backoff"
    text = "".join(traceback.format_exception(ei.value))
    assert "N0t-The-Pa55" not in text and SECRET not in text, text
    assert str(ei.value) in ("invalid username-password pair or user is disabled.",
                             "Authentication required.") or "authenticated" in str(ei.value)


def test_worker_with_a_wrong_password_logs_no_secret(
    auth_server: RedisServer, storage_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://:{SECRET}-but-wrong@127.0.0.1:{auth_server.port}/0"
    w = make_worker(url, storage_dir)
    with pytest.raises(redis.AuthenticationError) as ei:
        w.step()
    assert SECRET not in "".join(traceback.format_exception(ei.value)) + caplog.text


# -- TLS -------------------------------------------------------------------------------------------------------------
def _tls_missing() -> str | None:
    """Why TLS cannot be tested here, or None (a redis-server built without TLS is detected when it starts)."""
    for tool in ("openssl", "redis-server"):
        if not shutil.which(tool):
            return f"{tool} not found"
    return None


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """redis-server with ``--tls-port`` only (no plaintext port), a self-signed cert for 127.0.0.1, and a password."""
    why = _tls_missing()
    if why:
        pytest.skip(f"cannot test TLS: {why}")
    d = tmp_path_factory.mktemp("redis-tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port), "--bind",
         "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--requirepass", SECRET, "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"

    def up() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
            pytest.skip(f"cannot test TLS: redis-server --tls-port exited (built without TLS?): {err}")
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except redis.ConnectionError:
            return False

    wait_for(up, 10, "the TLS redis-server to accept connections")
    yield port, cert
    proc.terminate()
    proc.wait(10)


def test_tls_end_to_end_with_certificate_verification(
    tls_server: tuple[int, Path], storage_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """rediss:// with ``ssl_cert_reqs=required&ssl_ca_certs=...``: client and worker work, the password stays
    hidden; without the CA the self-signed certificate is rejected; plaintext to the TLS port gets nowhere.
    """
    caplog.set_level(logging.INFO)
    port, cert = tls_server
    url = f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    connect(url).flushall()
    job = Client(redis_url=url, storage=storage_dir).submit(good_spec("tls"))
    run_burst(url, storage_dir)
    assert job.status()["state"] == "succeeded", job.status().get("error")
    assert f"via rediss://:***@127.0.0.1:{port}/0?ssl_cert_reqs=required" in caplog.text
    assert SECRET not in caplog.text

    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        connect(f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=required", retries=0).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(f"redis://:{SECRET}@127.0.0.1:{port}/0", socket_timeout=2,
                             socket_connect_timeout=2).ping()


# -- the ACL documented in docs/security.md --------------------------------------------------------------------------
ACL_PASSWORDS = {"WORKER_PASSWORD": "w0rker-Pa55", "SUBMIT_PASSWORD": "subm1t-Pa55", "READONLY_PASSWORD": "r3ad-Pa55"}


def _documented_acl() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    block = text.split("<!-- acl:begin -->", 1)[1].split("<!-- acl:end -->", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("user ")]
    assert len(lines) == 4, block
    for placeholder, password in ACL_PASSWORDS.items():
        lines = [ln.replace(f">{placeholder}", f">{password}") for ln in lines]
    return lines


@pytest.fixture()
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server configured with exactly the ACL lines of docs/security.md (default user disabled last)."""
    srv = RedisServer(tmp_path / "redis-acl").start()
    admin = redis.Redis.from_url(srv.url)
    lines = _documented_acl()
    for line in sorted(lines, key=lambda ln: ln.startswith("user default ")):
        name, *rules = line.split()[1:]
        admin.execute_command("ACL", "SETUSER", name, *rules)
    yield srv
    srv.stop()


def test_documented_acl(acl_server: RedisServer, storage_dir: Path) -> None:
    """The ACL users of docs/security.md run traind end to end and are refused everything else."""
    base = f"127.0.0.1:{acl_server.port}/0"
    worker_url = f"redis://traind-worker:{ACL_PASSWORDS['WORKER_PASSWORD']}@{base}"
    submit_url = f"redis://traind-submit:{ACL_PASSWORDS['SUBMIT_PASSWORD']}@{base}"
    ro_url = f"redis://traind-readonly:{ACL_PASSWORDS['READONLY_PASSWORD']}@{base}"
    job = Client(redis_url=submit_url, storage=storage_dir).submit(good_spec("acl"))
    run_burst(worker_url, storage_dir)
    ro = Client(redis_url=ro_url, storage=storage_dir)
    st = ro.job(job.id).status(with_history=True)
    assert st["state"] == "succeeded", st.get("error")
    assert len(st["history"]) == 2 and ro.list()[0]["id"] == job.id

    with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to run the 'evalsha' command"):
        ro.submit(good_spec("read-only"))
    for url in (worker_url, submit_url):
        r = redis.Redis.from_url(url)
        for cmd in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("SCRIPT", "FLUSH"), ("ACL", "LIST"),
                    ("CLIENT", "LIST"), ("FUNCTION", "FLUSH"), ("MONITOR",), ("SET", "otherapp:key", "x")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.execute_command(*cmd)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(f"redis://{base}").ping()
