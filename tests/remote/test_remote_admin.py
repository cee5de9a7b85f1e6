"""The remote path's admin and security gaps (issue 26, round 2), against a real ``traind serve`` over TLS (a
self-signed certificate made with openssl) and its own redis-server; the CLI runs as "laptop" processes with no
Redis URL, no storage setting and no ``AWS_*``: ``traind token`` over HTTP, ``whoami``, ``--context`` and
``traind context``, the drained machines of ``traind workers``, the multi-device note of ``traind status``, the CA
bundle, and redirects that are never followed with the token."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.errors import ApiError
from jobs.remote.target import ApiTarget
from jobs.remote.transport import Transport
from testkit.cluster import RedisServer, free_port, wait_for
from tests.conftest import ROOT, Procs
from tests.storage.conftest import private_env

TOKEN = "tls-admin-token-5e0c71"
READ_TOKEN = "tls-read-token-a93d02"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


@dataclass
class Tls:
    url: str
    redis_url: str
    storage: Path
    cert: Path
    tmp: Path

    def env(self, name: str, **extra: str) -> dict[str, str]:
        keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
        env = private_env(self.tmp / name, {**keep, "PYTHONPATH": str(ROOT), "TRAIND_API_URL": self.url,
                                            "TRAIND_API_TOKEN": TOKEN, "TRAIND_API_CA_BUNDLE": str(self.cert),
                                            **extra})
        return {k: v for k, v in env.items() if v != ""}  # extra NAME="" drops NAME

    def cli(self, *args: str, name: str = "cli", **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon.cli", *args], env=self.env(name, **extra),
                              cwd=self.tmp, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    redis_srv = RedisServer(tmp / "redis").start()
    procs = Procs(tmp)
    port = free_port()
    storage = tmp / "storage"
    try:
        serve = procs.traind("serve", "--port", str(port), "--redis-url", redis_srv.url, "--storage", str(storage),
                             "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                             env={"TRAIND_API_TOKEN": TOKEN, "TRAIND_API_READ_TOKENS": READ_TOKEN}, name="serve")
        url = f"https://127.0.0.1:{port}"

        def up() -> bool:
            assert serve.poll() is None, Path(serve.log_path).read_text()  # type: ignore[attr-defined]
            try:
                return httpx.get(f"{url}/healthz", timeout=2, verify=str(cert)).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "traind serve over TLS")
        yield Tls(url, redis_srv.url, storage, cert, tmp)
    finally:
        procs.kill_all()
        redis_srv.stop()


def _one_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def _tls_is_verified_and_a_ca_bundle_trusts_a_private_ca(tls: Tls) -> None:
    r = redis.Redis.from_url(tls.redis_url)
    r.hset(keys.LEMONS_DRAINED, "gpu-box-3/gpu:0", json.dumps({"since_ms": 1_700_000_000_000, "reason": "3 hung"}))
    t0 = time.monotonic()
    p = tls.cli("workers", TRAIND_API_CA_BUNDLE="")  # the system's CAs do not know the self-signed certificate
    assert p.returncode == 1
    line = _one_line(p)
    assert "does not verify" in line and "TRAIND_API_CA_BUNDLE" in line, line
    assert time.monotonic() - t0 < 20  # refused at once, not retried as a connection error
    p = tls.cli("workers")  # with the bundle: the drained machine the Redis command also prints
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["no workers registered",
                                     "drained  gpu-box-3/gpu:0  since 2023-11-14 22:13:20.000: 3 hung"], p.stdout
    p = tls.cli("workers", TRAIND_API_CA_BUNDLE=str(tls.tmp / "missing.pem"))
    assert p.returncode == 2 and "cannot load the CA bundle" in _one_line(p)


def _token_commands_over_http_and_whoami(tls: Tls) -> None:
    p = tls.cli("token", "add", "alice", "--role", "submit")
    assert p.returncode == 0, p.stderr
    alice = p.stdout.strip()
    assert alice.startswith("traind_") and "\n" not in alice and alice not in p.stderr
    p = tls.cli("token", "list")
    assert p.returncode == 0 and "alice" in p.stdout and "submit" in p.stdout and alice not in p.stdout, p
    assert [t["name"] for t in json.loads(tls.cli("token", "list", "--json").stdout)] == ["alice"]
    assert tls.cli("token", "add", "alice", "--role", "read").returncode == 2  # taken: one line, exit 2

    def whoami(token: str) -> dict[str, str]:
        return httpx.get(f"{tls.url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"},
                         verify=str(tls.cert), timeout=10).json()

    wait_for(lambda: httpx.get(f"{tls.url}/api/v1/whoami", headers={"Authorization": f"Bearer {alice}"},
                               verify=str(tls.cert)).status_code == 200, 10, "alice's new token", interval=0.25)
    assert whoami(alice) == {"name": "alice", "role": "submit"}
    assert whoami(READ_TOKEN) == {"name": "read", "role": "read"}
    assert whoami(TOKEN) == {"name": "admin", "role": "admin"}
    p = tls.cli("token", "list", TRAIND_API_TOKEN=alice)  # a submit token manages no tokens
    assert p.returncode == 1 and "needs an admin token" in _one_line(p) and alice not in p.stderr
    p = tls.cli("token", "revoke", "alice")
    assert p.returncode == 0 and "revoked 'alice'" in p.stdout, p.stderr
    p = tls.cli("token", "revoke", "alice")
    assert p.returncode == 1 and "no stored token named 'alice'" in p.stderr
    wait_for(lambda: httpx.get(f"{tls.url}/api/v1/whoami", headers={"Authorization": f"Bearer {alice}"},
                               verify=str(tls.cert)).status_code == 401, 10, "the revoked token refused", interval=0.25)


def _the_context_option_and_what_traind_context_says(tls: Tls) -> None:
    home = tls.tmp / "ctx"
    token_file = home / "team.token"
    home.mkdir()
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    cfg = home / "config.toml"
    cfg.write_text(f'current = "broken"\n\n[contexts.team]\napi_url = "{tls.url}"\ntoken_file = "{token_file}"\n'
                   f'ca_bundle = "{tls.cert}"\n\n[contexts.broken]\napi_url = "https://127.0.0.1:1"\n'
                   f'token_file = "{token_file}"\n')
    env = {"TRAIND_CONFIG": str(cfg), "TRAIND_API_URL": "", "TRAIND_API_TOKEN": "", "TRAIND_API_CA_BUNDLE": "",
           "TRAIND_CONTEXT": "broken"}
    p = tls.cli("--context", "team", "workers", **env)  # over TRAIND_CONTEXT (and the file's current)
    assert p.returncode == 0 and "no workers registered" in p.stdout, p.stderr
    p = tls.cli("--context", "team", "context", **env)
    assert p.returncode == 0, p.stderr
    assert f"api_url: {tls.url}" in p.stdout and f"CA:      {tls.cert}" in p.stdout
    assert f"from:    context team (the --context option; {cfg})" in p.stdout, p.stdout
    assert TOKEN not in p.stdout
    assert f"context broken (TRAIND_CONTEXT; {cfg})" in tls.cli("context", **env).stdout
    p = tls.cli("context", **{**env, "TRAIND_CONTEXT": ""})
    assert f"context broken (the file's current; {cfg})" in p.stdout
    p = tls.cli("--context", "nope", "list", **env)
    assert p.returncode == 2 and "--context nope" in (line := _one_line(p)) and "broken, team" in line


def _status_over_http_gives_the_multi_device_note(tls: Tls) -> None:
    client = Client(redis_url=tls.redis_url, storage=tls.storage)
    job = client.submit({"name": "two", "resources": {"gpus": 2}, "fit": {"epochs": 1, "batch_size": 50},
                         "model": {"builder": "examples.regression:build_model", "builder_kwargs": {"units": 4}},
                         "data": {"loader": "examples.regression:load_data", "loader_kwargs": {"n": 100}}})
    p = tls.cli("status", job.id)
    assert p.returncode == 0, p.stderr
    assert "waits for a worker with 2 cpu devices (resources.gpus: 2): none is live" in p.stdout, p.stdout


def test_the_cli_over_tls_tokens_contexts_workers_status(tls: Tls) -> None:
    # one test over one serve: under xdist's load scheduling, separate tests could each start a serve of their own
    _tls_is_verified_and_a_ca_bundle_trusts_a_private_ca(tls)
    _token_commands_over_http_and_whoami(tls)
    _the_context_option_and_what_traind_context_says(tls)
    _status_over_http_gives_the_multi_device_note(tls)


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []
    redirect_to: str | None = None

    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        if self.redirect_to:
            self.send_response(307)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        type(self).seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args: object) -> None:
        pass


def _server(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_redirect_is_never_followed_with_the_token() -> None:
    other = type("Other", (_Recorder,), {"seen": [], "redirect_to": None})
    b = _server(other)
    target = f"http://127.0.0.1:{b.server_port}/api/v1/workers?X-Amz-Signature=secret"
    api = type("Api", (_Recorder,), {"seen": [], "redirect_to": target})
    a = _server(api)
    try:
        t = Transport(ApiTarget(f"http://127.0.0.1:{a.server_port}", "traind_secret-token"))
        with pytest.raises(ApiError) as e:
            t.json("GET", "/api/v1/workers")
        msg = str(e.value)
        assert "answered 307, a redirect to http://127.0.0.1:" in msg and "not followed" in msg, msg
        assert "secret" not in msg  # neither the token nor the Location's query
        assert other.seen == []  # nothing reached the other host
        # httpx itself, told to follow, drops the Authorization header on the way to another origin
        with httpx.Client(headers={"Authorization": "Bearer traind_secret-token"}, follow_redirects=True) as h:
            assert h.get(f"http://127.0.0.1:{a.server_port}/api/v1/workers").json() == []
        assert len(other.seen) == 1 and not {k.lower() for k in other.seen[0]} & {"authorization"}, other.seen
    finally:
        a.shutdown()
        b.shutdown()
