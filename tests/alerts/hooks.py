"""A local HTTP endpoint that records the alerts Apprise posts to it (``json://127.0.0.1:PORT/<path>``).

>>> # with Hooks() as hooks: url = hooks.url("ok"); ...; hooks.wait_count("ok", 1, 30)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from testkit.cluster import wait_for


class Hooks:
    """Records every POST as ``{"path", "body", "t", "status"}``; ``fail(path, n)`` answers 500 to its next n."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(n, 1_000_000))
                path = self.path.strip("/")
                with hooks._lock:
                    failing = hooks._failures.get(path, 0) > 0
                    if failing:
                        hooks._failures[path] -= 1
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = {"raw": raw.decode(errors="replace")}
                    hooks.requests.append({"path": path, "body": body, "t": time.monotonic(),
                                           "status": 500 if failing else 200})
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hooks:
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str, auth: str = "") -> str:
        return f"json://{auth}127.0.0.1:{self.port}/{path}"

    def fail(self, path: str, times: int) -> None:
        with self._lock:
            self._failures[path] = times

    def at(self, path: str, ok_only: bool = True) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"] == path and (r["status"] == 200 or not ok_only)]

    def wait_count(self, path: str, n: int, timeout: float, ok_only: bool = True) -> list[dict[str, Any]]:
        return wait_for(lambda: (lambda got: got if len(got) >= n else None)(self.at(path, ok_only)), timeout,
                        f"{n} request(s) at /{path}")
