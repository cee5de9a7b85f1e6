"""The FastAPI application of ``traind serve`` and how it runs under uvicorn.

Stateless: everything shown is read from Redis on request (or on a Redis notification), so several serve
processes can run behind a load balancer.

>>> # app = create_app(ServeSettings(api_token="s3cret")); uvicorn.run(app, host="127.0.0.1", port=8600)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import redis
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from daemon.serve import auth
from daemon.serve.api import install_error_handlers, router
from daemon.serve.guard import Guard
from daemon.serve.sse import Hub
from daemon.serve.sweeps_api import router as sweeps_router
from daemon.serve.tokens_api import router as tokens_router
from jobs.errors import ConfigError
from jobs.redis.conn import connect, connect_async, redact_url
from jobs.redis.store import JobStore
from jobs.settings import ClientSettings, ServeSettings

log = logging.getLogger("traind.serve")
STATIC = files("daemon.serve") / "static"


# A submit body is {"spec": ..., "client_key": ...}: room for a spec at its limit and the rest.
BODY_OVER_SPEC_BYTES = 64 * 1024


def create_app(settings: ServeSettings) -> FastAPI:
    """Build the app; refuses to start without a token (an open API could submit jobs), with a weak one off loopback,
    or with a body limit that would refuse specs under TRAIND_MAX_SPEC_BYTES."""
    auth.check_strength(settings)
    if settings.max_body_bytes < settings.max_spec_bytes + BODY_OVER_SPEC_BYTES:
        raise ConfigError(f"TRAIND_MAX_BODY_BYTES={settings.max_body_bytes} would refuse specs that "
                          f"TRAIND_MAX_SPEC_BYTES={settings.max_spec_bytes} allows; set it to at least "
                          f"{settings.max_spec_bytes + BODY_OVER_SPEC_BYTES}")
    url = settings.effective_redis_url()
    client_settings = ClientSettings(**settings.model_dump(include=set(ClientSettings.model_fields)))
    conn = connect(url, retries=5, socket_timeout_s=30.0, settings=client_settings)
    if settings.api_token is None and not settings.api_read_tokens and not _stored_tokens(conn):
        raise ConfigError("traind serve needs a token: TRAIND_API_TOKEN (admin), TRAIND_API_READ_TOKENS (read-only) "
                          "or one made with `traind token add NAME --role admin`; without one every request would "
                          "be refused")
    store = JobStore(conn, events_max=settings.events_max, max_history=settings.max_history)
    aconn = connect_async(url)  # follows the primary through the sentinels for redis+sentinel:// URLs
    hub = Hub(store, aconn)
    metrics_registry: list[Any] = []  # prometheus_client is imported on the first scrape: a faster start

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run(), name="traind-notify")
        log.info("traind serve: redis %s", redact_url(url))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await aconn.aclose()

    # No /docs or /redoc: they load their scripts from a CDN on the dashboard's origin (the schema stays at
    # /openapi.json for any viewer run elsewhere).
    app = FastAPI(title="traind", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Fault-tolerant Keras training daemon: jobs, workers, queues, live progress. "
                              "Authenticate with `Authorization: Bearer <token>`.")
    app.state.settings = settings
    app.state.store = store
    app.state.client = None  # jobs.client (rq, numpy) is imported on the first submit
    app.state.client_settings = client_settings
    app.state.hub = hub
    app.state.tokens = auth.Tokens(settings, *auth.redis_source(aconn))  # env tokens + `traind token add` ones
    app.state.auth_failures = auth.FailureLimiter(settings.auth_failures_max, settings.auth_failures_window_s)
    # Auth, rate limit and body size before anything reads a body; security headers on every response.
    app.add_middleware(Guard, tokens=app.state.tokens, limiter=app.state.auth_failures,
                       max_body_bytes=settings.max_body_bytes)
    app.include_router(router)
    app.include_router(sweeps_router)  # /api/v1/sweeps (daemon/serve/sweeps_api.py)
    install_error_handlers(app)  # traind's errors -> 404/409/422, for every route
    app.include_router(tokens_router)  # /api/v1/tokens, admin only (daemon/serve/tokens_api.py)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        """Liveness for load balancers and container healthchecks (no auth, no data)."""
        try:
            conn.ping()
        except redis.RedisError:
            return JSONResponse({"ok": False, "redis": False}, status_code=503)
        return JSONResponse({"ok": True, "redis": True})

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(auth.read)])
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from daemon.serve.metrics import TraindCollector

        if not metrics_registry:
            reg = CollectorRegistry(auto_describe=False)
            reg.register(TraindCollector(store, settings.lease_ttl_s))
            metrics_registry.append(reg)
        return Response(generate_latest(metrics_registry[0]), media_type=CONTENT_TYPE_LATEST)

    # The dashboard: static files only (no data in them); every number comes from the API with the token.
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:  # what browsers ask for whatever the page says: an asset, open like /static
        return FileResponse(str(STATIC / "favicon.svg"), media_type="image/svg+xml")

    return app


def _stored_tokens(conn: redis.Redis) -> bool:
    """Whether Redis holds any `traind token add` token (checked at start when no env token is set)."""
    from jobs.contract import keys

    try:
        return bool(conn.hlen(keys.API_TOKENS))
    except redis.RedisError as e:
        raise ConfigError(f"traind serve has no TRAIND_API_TOKEN/TRAIND_API_READ_TOKENS and cannot read the stored "
                          f"tokens from Redis ({type(e).__name__}: {e}); start Redis or set TRAIND_API_TOKEN") from None


def run(settings: ServeSettings, ready: Any = None) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn's handlers); with TRAIND_SSL_CERTFILE/KEYFILE over TLS itself."""
    import uvicorn

    app = create_app(settings)
    tls = settings.ssl_certfile is not None
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=True,
                            log_config=None,  # keep traind's logging setup (text or JSON)
                            ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile)
    server = uvicorn.Server(config)
    if not tls and not auth.is_loopback(settings.host):
        log.warning("traind serve on %s without TLS: tokens cross the network in clear unless a TLS proxy is in "
                    "front (docs/deploying.md#tls)", settings.host)
    log.info("traind serve on %s://%s:%d", "https" if tls else "http", settings.host, settings.port)
    server.run()
    return 0
