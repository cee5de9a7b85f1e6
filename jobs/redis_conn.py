"""Redis connections that survive a Redis restart: retries with exponential backoff, secrets never logged."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry


def connect(url: str, retries: int = 20, socket_timeout_s: float | None = 30.0) -> redis.Redis:
    """A client for ``url`` (redis://, rediss:// for TLS, ``user:password@`` for ACL) that retries
    dropped connections with exponential backoff (capped at 2 s) instead of failing at once.
    """
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=5.0,
        health_check_interval=10,
    )


def redact_url(url: str | None) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host`` for logs and messages."""
    if not url:
        return str(url)
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
