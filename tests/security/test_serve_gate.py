"""Issue 21.1 and 21.8 (serve side), against a real ``traind serve`` process and redis-server: nothing reads a body
before the token and its size are checked; failed tokens are rate-limited; weak tokens are refused off loopback; the
dashboard's origin serves no third-party script and sends its security headers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Procs
from tests.security.serve_helpers import (
    READ_TOKEN,
    TOKEN,
    ServeProcess,
    post_chunked,
    post_partial,
    start_serve,
)

HUGE = 300_000_000  # the attack: a 300 MB body


def test_unauthenticated_huge_body_is_refused_before_it_is_read(serve_proc: ServeProcess) -> None:
    rss0 = serve_proc.rss_mib()
    for token in (None, "wrong-token-" + TOKEN):
        a = post_partial(serve_proc.port, "/api/v1/jobs", declared=HUGE, send=1 << 20, token=token)
        assert a.status == 401, a
        assert a.headers["connection"] == "close"
        assert a.sent <= 1 << 20  # answered with 299 MB never sent
    # any route, any method: the gate is in front of all of them
    for path in ("/api/v1/jobs/abc/cancel", "/api/v1/nope", "/healthz", "/"):
        assert post_partial(serve_proc.port, path, declared=HUGE, send=1 << 16).status == 401, path
    # a read-only token may not write: 403 before the body too
    a = post_partial(serve_proc.port, "/api/v1/jobs", declared=HUGE, send=1 << 16, token=READ_TOKEN)
    assert a.status == 403 and "read-only" in a.body["detail"], a
    assert serve_proc.rss_mib() - rss0 < 50, "serve's memory grew: a body was read"


def test_declared_body_over_the_limit_is_413_at_once(serve_proc: ServeProcess) -> None:
    a = post_partial(serve_proc.port, "/api/v1/jobs", declared=HUGE, send=1 << 16, token=TOKEN)
    assert a.status == 413, a
    assert a.body["detail"] == f"request body of {HUGE} bytes exceeds TRAIND_MAX_BODY_BYTES={2 * 1024**2}"
    # the route never ran: a cancel with an oversized body cancels nothing
    with serve_proc.client() as c:
        jid = c.post("/api/v1/jobs", json={"spec": _spec()}).json()["id"]
        assert post_partial(serve_proc.port, f"/api/v1/jobs/{jid}/cancel", declared=HUGE, send=10, token=TOKEN
                            ).status == 413
        assert c.get(f"/api/v1/jobs/{jid}").json()["state"] == "queued"


def test_chunked_body_is_cut_off_at_the_limit_and_memory_stays_flat(serve_proc: ServeProcess) -> None:
    rss0 = serve_proc.rss_mib()
    total = 256 << 20
    a = post_chunked(serve_proc.port, "/api/v1/jobs", total=total, token=TOKEN)
    assert a.status == 413, a
    assert a.body["detail"].endswith(f"exceeds TRAIND_MAX_BODY_BYTES={2 * 1024**2}")
    assert a.sent < total  # refused while streaming, not after
    assert serve_proc.rss_mib() - rss0 < 100, f"serve's RSS grew from {rss0:.0f} to {serve_proc.rss_mib():.0f} MiB"
    assert post_chunked(serve_proc.port, "/api/v1/jobs", total=total).status == 401  # without a token: before any chunk
    with serve_proc.client() as c:  # and serve goes on
        assert c.post("/api/v1/jobs", json={"spec": _spec()}).status_code == 201


def test_wrong_tokens_are_rate_limited_per_address(procs: Procs, redis_url: str, storage_dir: Path) -> None:
    sp = start_serve(procs, redis_url, storage_dir, TRAIND_AUTH_FAILURES_MAX="5", TRAIND_AUTH_FAILURES_WINDOW_S="600")
    with sp.client(token="guess-0000000000000000") as bad, sp.client() as good, sp.client(token=None) as anon:
        assert good.get("/api/v1/jobs").status_code == 200
        for _ in range(5):
            assert bad.get("/api/v1/jobs").status_code == 401
        resp = bad.get("/api/v1/jobs")
        assert resp.status_code == 429, resp.text
        assert 100 <= int(resp.headers["retry-after"]) <= 120  # one failure forgiven every 600/5 s
        assert "too many wrong tokens" in resp.json()["detail"]
        # the address is blocked for token-bearing requests, even the right token (a hit must not tell) ...
        assert good.get("/api/v1/jobs").status_code == 429
        # ... while requests without a token and the public paths answer as before
        assert anon.get("/api/v1/jobs").status_code == 401
        assert anon.get("/healthz").status_code == 200


def test_failure_limiter_refills_and_stays_bounded() -> None:
    from daemon.serve.auth import FailureLimiter

    lim = FailureLimiter(limit=3, window_s=30.0, max_addresses=100)
    for _ in range(3):
        lim.failed("a", now=0.0)
    assert lim.retry_after("a", now=0.0) == pytest.approx(10.0)
    assert lim.retry_after("a", now=10.0) is None  # one failure forgiven every 10 s
    for i in range(1000):
        lim.failed(f"10.0.{i // 256}.{i % 256}", now=1.0)
    assert len(lim._buckets) == 100
    assert lim.retry_after("a", now=1000.0) is None


def _serve_cli(host: str, token: str, tmp_path: Path, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}, "PYTHONPATH": str(ROOT),
           "TRAIND_API_TOKEN": token, "TRAIND_REDIS_URL": redis_url, "TRAIND_STORAGE_DIR": str(tmp_path / "s"),
           "TRAIND_PORT": "0"}
    return subprocess.run([sys.executable, "-m", "daemon.cli", "serve", "--host", host], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("token", ["x", "aaaaaaaaaaaaaaaaaaaaaaaa", "short-7c1e"])
def test_weak_token_refused_off_loopback(token: str, tmp_path: Path, redis_url: str) -> None:
    p = _serve_cli("0.0.0.0", token, tmp_path, redis_url)
    assert p.returncode == 2, p.stdout + p.stderr
    assert ("TRAIND_API_TOKEN: too weak to serve on 0.0.0.0 (not loopback): tokens need at least 16 characters, 6 of "
            "them different; make one with `openssl rand -hex 24`") in p.stderr
    assert len(token) == 1 or token not in p.stderr  # never echoed


def test_headers_no_cdn_docs(serve_proc: ServeProcess) -> None:
    with serve_proc.client(token=None) as anon, serve_proc.client() as c:
        for resp in (anon.get("/"), anon.get("/static/app.js"), anon.get("/healthz"), c.get("/api/v1/jobs"),
                     anon.get("/api/v1/jobs")):
            h = resp.headers
            assert "frame-ancestors 'none'" in h["content-security-policy"] and "script-src 'self'" in \
                h["content-security-policy"], resp.url
            assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
            assert h["referrer-policy"] == "no-referrer"
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert anon.get(path).status_code in (401, 404), path  # gone (Swagger's CDN scripts with them)
            assert c.get(path).status_code == 404, path
        assert "cdn" not in anon.get("/").text.lower()
        assert anon.get("/openapi.json").json()["paths"]  # the schema stays, for a viewer served elsewhere


def _spec() -> dict[str, object]:
    return {"name": "gated", "model": {"builder": "examples.regression:build_model"},
            "data": {"loader": "examples.regression:load_data"}, "fit": {"epochs": 1}}


def test_loopback_allows_a_short_token_for_development(tmp_path: Path, redis_url: str, procs: Procs) -> None:
    sp = start_serve(procs, redis_url, tmp_path, TRAIND_API_TOKEN="x", TRAIND_API_READ_TOKENS="")
    assert httpx.get(f"{sp.base}/api/v1/jobs", headers={"Authorization": "Bearer x"}, timeout=30).status_code == 200


def test_a_spec_at_the_spec_limit_still_fits_the_body_limit(serve_proc: ServeProcess) -> None:
    spec = {**_spec(), "model": {"builder": "examples.regression:build_model",
                                 "builder_kwargs": {"notes": ["x" * 1000] * 950}}}  # ~960 kB of the 1 MB spec limit
    with serve_proc.client() as c:
        resp = c.post("/api/v1/jobs", json={"spec": spec})
        assert resp.status_code != 413, resp.text
        assert resp.status_code == 201, resp.text


def test_a_body_limit_below_the_spec_limit_refuses_to_start(redis_url: str, storage_dir: Path) -> None:
    from daemon.serve.app import create_app
    from jobs.errors import ConfigError
    from jobs.settings import ServeSettings

    settings = ServeSettings(redis_url=redis_url, storage_dir=storage_dir, api_token=TOKEN, max_body_bytes=2**20)
    with pytest.raises(ConfigError, match=r"TRAIND_MAX_BODY_BYTES=1048576 would refuse specs that "
                                          r"TRAIND_MAX_SPEC_BYTES=1000000 allows; set it to at least 1065536"):
        create_app(settings)
