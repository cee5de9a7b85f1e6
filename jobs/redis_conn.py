"""Redis connections that survive a Redis restart: retries with exponential backoff, secrets never logged."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # when neither --redis-url nor TRAIND_REDIS_URL is given
# Query parameters that carry secrets (redis-py accepts ``?password=...`` and ``?ssl_password=...``).
_SECRET_PARAM = re.compile(r"(?i)((?:^|&)[^&=]*password)=[^&]*")


class _Retry(Retry):
    """Retry dropped connections, but never refused credentials: retrying cannot fix a wrong password or ACL
    (redis-py's AuthenticationError is a ConnectionError, so without this a bad password hangs ~30 s).
    """

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any], is_retryable: Any = None,
                        with_failure_count: bool = False) -> Any:
        def retryable(e: Exception) -> bool:
            if isinstance(e, (AuthenticationError, AuthorizationError)):
                return False
            return is_retryable(e) if is_retryable is not None else True

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def connect(url: str, retries: int = 20, socket_timeout_s: float | None = 30.0) -> redis.Redis:
    """A client for ``url`` (redis://, rediss:// for TLS, ``user:password@`` for ACL) that retries
    dropped connections with exponential backoff (capped at 2 s) instead of failing at once.
    """
    return redis.Redis.from_url(
        url,
        retry=_Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
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
    query = _SECRET_PARAM.sub(r"\1=***", parts.query)
    if parts.password is None and "@" not in parts.netloc:
        return urlunsplit(parts._replace(query=query)) if query != parts.query else url
    host = parts.netloc.rpartition("@")[2]  # as written: keeps an IPv6 host's brackets and the port
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
