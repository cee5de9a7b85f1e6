"""A real S3 endpoint for tests: moto's standalone server (a separate process on a free port), optionally behind a
fault-injecting HTTP proxy (503s, dropped connections, the endpoint going away and coming back).

Clients reach it the standard way: ``AWS_ENDPOINT_URL`` and dummy keys in the environment (see :meth:`MotoS3.env`).
"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testkit.cluster import free_port

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
         # botocore's own retries kept short, so that traind's backoff (the outer loop) is what the tests exercise
         "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2"}
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class MotoS3:
    """``moto_server`` child process; data lives in its memory for its lifetime."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.logdir = logdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        exe = shutil.which("moto_server")
        cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
        log = open(self.logdir / "moto.log", "wb")  # lives as long as the server
        self.proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {(self.logdir / 'moto.log').read_text()}"
                                       ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def reset(self) -> None:
        """Forget every bucket (moto's reset API): tests share one server."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    @staticmethod
    def env(endpoint: str) -> dict[str, str]:
        return {**CREDS, "AWS_ENDPOINT_URL": endpoint}

    def client(self, endpoint: str | None = None) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")


class FaultProxy:
    """An HTTP reverse proxy in front of moto that can fail requests on purpose.

    - ``fail(n, status, when)``: the next ``n`` requests matching ``when(method, path)`` get ``status`` (no forward);
    - ``cut(n, when)``: the next ``n`` matching requests have their connection dropped after reading half the body;
    - ``down()`` / ``up()``: stop listening (connection refused, as a restarting server) and listen again.

    ``bytes_out`` counts the response body bytes forwarded to clients: how much they downloaded.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.rules: list[list[Any]] = []  # [kind, remaining, status, when]
        self.log: list[tuple[str, str, int]] = []  # (method, path, status) of every request seen
        self.bytes_out = 0  # response body bytes sent to clients: what they downloaded
        self.server: http.server.ThreadingHTTPServer | None = None
        self.conns: set[Any] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, n: int, status: int = 503, when: Callable[[str, str], bool] = lambda m, p: True) -> None:
        with self.lock:
            self.rules.append(["fail", n, status, when])

    def cut(self, n: int, when: Callable[[str, str], bool] = lambda m, p: True) -> None:
        with self.lock:
            self.rules.append(["cut", n, 0, when])

    def pending(self) -> int:
        with self.lock:
            return sum(r[1] for r in self.rules)

    def _rule(self, method: str, path: str) -> tuple[str, int] | None:
        with self.lock:
            for r in self.rules:
                if r[1] > 0 and r[3](method, path):
                    r[1] -= 1
                    return r[0], r[2]
        return None

    def up(self) -> FaultProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy.lock:
                    proxy.conns.add(self.connection)

            def finish(self) -> None:
                with proxy.lock:
                    proxy.conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                rule = proxy._rule(self.command, self.path)
                if rule and rule[0] == "cut":
                    self.rfile.read(n // 2)
                    proxy.log.append((self.command, self.path, -1))
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                body = self.rfile.read(n) if n else b""
                if rule:
                    code = {403: "AccessDenied", 404: "NoSuchBucket", 503: "SlowDown"}.get(rule[1], "InternalError")
                    msg = f"<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>".encode()
                    self.send_response(rule[1])
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    proxy.log.append((self.command, self.path, rule[1]))
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP and k.lower() != "expect"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # a HEAD answer has no body but tells the object's size: forward it as it is
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                    with proxy.lock:
                        proxy.bytes_out += len(data)
                conn.close()
                proxy.log.append((self.command, self.path, resp.status))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="s3-proxy").start()
        return self

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for c in conns:  # keep-alive connections too: a restarting server drops them
            try:
                c.shutdown(2)
            except OSError:
                pass


def s3_env_for(endpoint: str) -> dict[str, str]:
    """Environment of a process that talks to ``endpoint`` as a user would: the standard AWS variables."""
    env = dict(MotoS3.env(endpoint))
    env["AWS_CONFIG_FILE"] = os.devnull  # a developer's ~/.aws must not leak into the tests
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return env
