"""Bearer-token auth: 401 without/with a wrong token (except /healthz), 403 for read-only tokens on writes,
no start without a token, 127.0.0.1 by default, and the token never in the logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from daemon.serve.app import create_app
from jobs.errors import ConfigError
from jobs.settings import ServeSettings
from testkit.cluster import free_port
from tests.conftest import ROOT, wait_for
from tests.serve.conftest import READ_TOKEN, TOKEN, Served, slow_spec

READ_PATHS = ["/api/v1/jobs", "/api/v1/workers", "/api/v1/queues", "/metrics", "/api/v1/jobs/abc/history"]


def test_no_or_wrong_token_is_401_except_healthz(served: Served) -> None:
    for token in (None, "wrong-token", TOKEN + "x"):
        with served.client(token=token) as c:
            for path in READ_PATHS:
                resp = c.get(path)
                assert resp.status_code == 401, (token, path, resp.text)
                assert resp.headers["www-authenticate"].startswith("Bearer")
            assert c.post("/api/v1/jobs", json={"spec": slow_spec()}).status_code == 401
            assert c.get("/healthz").json() == {"ok": True, "redis": True}
    with served.client(token=None, headers={"Authorization": f"Basic {TOKEN}"}) as c:
        assert c.get("/api/v1/jobs").status_code == 401  # only the Bearer scheme


def test_read_only_token_reads_but_cannot_write(served: Served) -> None:
    with served.client() as full:
        jid = full.post("/api/v1/jobs", json={"spec": slow_spec()}).json()["id"]
    with served.client(token=READ_TOKEN) as ro:
        for path in READ_PATHS[:4] + [f"/api/v1/jobs/{jid}"]:
            assert ro.get(path).status_code == 200, path
        for path, body in (("/api/v1/jobs", {"spec": slow_spec()}), (f"/api/v1/jobs/{jid}/cancel", None),
                           (f"/api/v1/jobs/{jid}/retry", None)):
            resp = ro.post(path, json=body)
            assert resp.status_code == 403 and "read-only" in resp.json()["detail"]
        assert ro.get("/api/v1/jobs").json()["total"] == 1
        assert ro.get(f"/api/v1/jobs/{jid}").json()["state"] == "queued"  # the cancel was refused


def test_serve_refuses_to_start_without_a_token(redis_url: str, storage_dir: Path) -> None:
    with pytest.raises(ConfigError, match="TRAIND_API_TOKEN"):
        create_app(ServeSettings(redis_url=redis_url, storage_dir=storage_dir))
    assert ServeSettings().host == "127.0.0.1"


def test_traind_serve_process_binds_localhost_and_never_logs_the_token(redis_url: str, storage_dir: Path,
                                                                        tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRAIND_API_TOKEN": TOKEN, "TRAIND_API_READ_TOKENS": READ_TOKEN,
           "TRAIND_REDIS_URL": redis_url, "TRAIND_STORAGE_DIR": str(storage_dir), "TRAIND_PORT": str(port)}
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "daemon.cli", "-v", "serve"], cwd=ROOT, env=env, stdout=out,
                             stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "traind serve to answer")
        for token in (TOKEN, READ_TOKEN, "guess-" + TOKEN):
            h = {"Authorization": f"Bearer {token}"}
            httpx.get(f"{base}/api/v1/jobs", headers=h, timeout=10)
            httpx.post(f"{base}/api/v1/jobs", headers=h, json={"spec": {"bad": 1}}, timeout=10)
            httpx.get(f"{base}/api/v1/jobs/nope", headers=h, timeout=10)
            httpx.get(f"{base}/metrics", headers=h, timeout=10)
    finally:
        p.terminate()
        p.wait(30)
    text = log.read_text(errors="replace")
    assert "GET /api/v1/jobs" in text  # the access log is on ...
    assert f"127.0.0.1:{port}" in text  # ... and it bound localhost (the default)
    assert TOKEN not in text and READ_TOKEN not in text


def test_the_doc_names_every_route_open_without_a_token(served: Served) -> None:
    """Issue 22 item 6: docs/observability.md says which routes answer without a token; each one that does is named
    there (and nothing with data is among them)."""
    from starlette.routing import Mount, Route

    doc = (ROOT / "docs" / "observability.md").read_text()
    app = served.app
    paths = [r.path for r in app.routes if isinstance(r, Route) and "GET" in (r.methods or set())
             and "{" not in r.path] + [f"{r.path}/app.js" for r in app.routes if isinstance(r, Mount)]
    with served.client(token=None) as c:
        open_paths = [p for p in paths if c.get(p).status_code == 200]
        assert c.get("/favicon.ico").headers["content-type"].startswith("image/")
    assert "/" in open_paths and "/favicon.ico" in open_paths and "/api/v1/jobs" not in open_paths
    for p in open_paths:
        named = "/static/" if p.startswith("/static/") else p
        assert f"`{named}" in doc, (p, "open without a token but not named in docs/observability.md")
