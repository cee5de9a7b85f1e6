"""Redis connections that survive a Redis restart: retries with exponential backoff, secrets never logged."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

from jobs.errors import ConfigError

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
    check_redis_url(url)
    try:
        return _from_url(url, retries, socket_timeout_s)
    except ValueError as e:  # redis-py's message can quote part of the URL, the password included: never show it
        raise ConfigError(f"TRAIND_REDIS_URL {redact_url(url)} is not a valid Redis URL ({type(e).__name__}); "
                          "percent-encode special characters of the password") from None


def _from_url(url: str, retries: int, socket_timeout_s: float | None) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        retry=_Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=5.0,
        health_check_interval=10,
    )


def redact_url(url: str | None) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host`` for logs and messages.

    Everything between ``://`` and the *last* ``@`` is credentials: a password with an unencoded ``/``, ``?`` or
    ``#`` (base64 has ``/``) makes URL parsers split it into path, query or fragment, and it must not show there.

    >>> redact_url("redis://:ab/cd@h:6379/0")
    'redis://:***@h:6379/0'
    """
    if not url:
        return str(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" + url[url.rfind("@"):] if "@" in url else url
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        user = userinfo.split(":", 1)[0] if ":" in userinfo else userinfo
        if not re.fullmatch(r"[A-Za-z0-9._~%+-]*", user):
            user = ""  # not a plain user name: part of a garbled password
        rest = f"{user}:***@{rest}"
    head, q, query = rest.partition("?")
    if q:
        query, hsh, frag = query.partition("#")
        rest = head + q + _SECRET_PARAM.sub(r"\1=***", query) + hsh + frag
    return f"{scheme}://{rest}"


def check_redis_url(url: str, what: str = "TRAIND_REDIS_URL") -> str:
    """``url`` if it parses as a Redis URL, else ConfigError: one line, the password redacted, percent-encoding
    explained (``urllib.parse.quote(password, safe='')``).

    >>> check_redis_url("redis://:ab/cd@h:6379/0")
    Traceback (most recent call last):
    ...
    jobs.errors.ConfigError: TRAIND_REDIS_URL redis://:***@h:6379/0 is not a valid URL: ...
    """
    parts = urlsplit(url)
    problem = None
    after_host = parts.path + "?" + parts.query + "#" + parts.fragment
    if "@" in after_host and "@" not in parts.netloc:
        problem = "its password contains '/', '?' or '#'"
    elif "sentinel" not in parts.scheme:  # a sentinel URL lists several host:port pairs; its parser checks them
        try:
            parts.port  # noqa: B018 - raises for a non-numeric port
        except ValueError:
            problem = "its port is not a number (or its password contains ':', '/', '?' or '#')"
    if problem:
        raise ConfigError(f"{what} {redact_url(url)} is not a valid URL: {problem}; percent-encode special characters "
                          "of the user name and password (Python: urllib.parse.quote(password, safe=''))")
    return url
