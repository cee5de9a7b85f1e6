"""A real ``traind serve`` process for the attacks of issue 21 (items 1, 3, 8), its RSS, and a raw HTTP client that
sends headers and only part of a body, to show what serve answers *before* the rest arrives."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from testkit.cluster import free_port
from tests.conftest import Procs, log_of, wait_for

TOKEN = "gate-token-3c9f1e07b2d84a65"  # >= 16 characters, many distinct: accepted off loopback too
READ_TOKEN = "gate-read-8e2d5a91c07f4b36"


@dataclass
class ServeProcess:
    """``python -m daemon.cli serve`` on a free port of 127.0.0.1."""

    port: int
    proc: Any
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        """The serve process' resident memory (``VmRSS``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS for the serve process")

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=120.0)

    def log(self) -> str:
        return log_of(self.proc)


def start_serve(procs: Procs, redis_url: str, storage_dir: Path, **env: str) -> ServeProcess:
    """Start ``traind serve`` with ``TRAIND_*`` ``env`` on top of a redis URL, storage and the tokens above."""
    port = free_port()
    full = {"TRAIND_API_TOKEN": TOKEN, "TRAIND_API_READ_TOKENS": READ_TOKEN, "TRAIND_REDIS_URL": redis_url,
            "TRAIND_STORAGE_DIR": str(storage_dir), "TRAIND_PORT": str(port), **env}
    p = procs.traind("serve", env=full, name="serve")
    sp = ServeProcess(port, p, full)

    def up() -> bool:
        assert p.poll() is None, f"traind serve exited {p.returncode}:\n{sp.log()}"
        try:
            return httpx.get(f"{sp.base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 90, "traind serve to answer /healthz")
    return sp


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    sent: int  # body bytes sent before the answer came


def _read_answer(sock: socket.socket, sent: int, timeout_s: float, what: str) -> Answer:
    sock.settimeout(timeout_s)
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        raw = resp.read()
    except TimeoutError:
        raise AssertionError(f"no answer within {timeout_s} s after {sent} body bytes: serve waited for the rest of "
                             f"the body ({what})") from None
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, sent)


def post_partial(port: int, path: str, declared: int, send: int, token: str | None = None,
                 timeout_s: float = 20.0) -> Answer:
    """POST declaring ``Content-Length: declared`` and sending only its first ``send`` bytes, then wait for the
    answer without sending the rest (a server that reads the body before answering never answers)."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
            f"Content-Length: {declared}"] + ([f"Authorization: Bearer {token}"] if token else [])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        try:
            sock.sendall(b'{"spec": "' + b"x" * (send - 10))
            sent = send
        except OSError:  # the server answered and closed before taking it all: what a gate should do
            pass
        return _read_answer(sock, sent, timeout_s, f"declared {declared} bytes")


def post_chunked(port: int, path: str, total: int, token: str | None = None, chunk: int = 1 << 20,
                 timeout_s: float = 60.0) -> Answer:
    """POST a chunked body of up to ``total`` bytes, one ``chunk`` at a time, stopping as soon as serve answers."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
            "Transfer-Encoding: chunked"] + ([f"Authorization: Bearer {token}"] if token else [])
    piece = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        deadline = time.monotonic() + timeout_s
        while sent < total and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break  # an answer (or a close) is waiting: stop sending
            try:
                sock.sendall(piece)
            except OSError:
                break
            sent += chunk
        else:
            try:
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass
        return _read_answer(sock, sent, timeout_s, f"chunked, {sent} bytes sent")
