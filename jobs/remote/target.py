"""Which traind API a client or CLI talks to: :func:`resolve_target`.

Precedence: explicit arguments, then ``TRAIND_API_URL`` + ``TRAIND_API_TOKEN``, then (once merged) the config file's
current context (issue 26's contexts; this is the one function to point at that resolver). None when no API is
configured: the caller uses Redis as before.

>>> resolve_target("http://127.0.0.1:8600/", "t0ken", env={})
ApiTarget(url='http://127.0.0.1:8600', token='***')
>>> resolve_target(env={}) is None
True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from jobs.errors import ConfigError

log = logging.getLogger("traind.remote")
URL_ENV, TOKEN_ENV = "TRAIND_API_URL", "TRAIND_API_TOKEN"


@dataclass(frozen=True)
class ApiTarget:
    """An API base URL (no trailing slash) and its bearer token (never shown in reprs or messages)."""

    url: str
    token: str = field(repr=False)

    def __repr__(self) -> str:
        return f"ApiTarget(url={self.url!r}, token='***')"


def check_url(url: str) -> str:
    """``url`` without its trailing slash; ConfigError (one line) unless it is an http(s) URL with a host and no
    credentials, query or fragment."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{URL_ENV}: expected http(s)://host[:port][/prefix], received {url[:100]!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{URL_ENV}: the URL must not carry credentials, a query or a fragment (the token goes in "
                          f"{TOKEN_ENV})")
    return url.strip().rstrip("/")


def resolve_target(api_url: str | None = None, token: str | None = None,
                   env: Mapping[str, str] | None = None) -> ApiTarget | None:
    """The API to use, or None (no URL anywhere). A URL without a token is a ConfigError naming what to set."""
    env = os.environ if env is None else env
    url = api_url or env.get(URL_ENV) or None
    if url is None:
        return None
    tok = token or env.get(TOKEN_ENV) or None
    if not tok:
        raise ConfigError(f"{URL_ENV} is {url[:100]} but no token is given: set {TOKEN_ENV} (or pass token=...)")
    url = check_url(url)
    parts = urlsplit(url)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        log.warning("%s is plain http to %s: the token crosses the network unencrypted; put TLS in front "
                    "(docs/deploying.md)", URL_ENV, parts.hostname)
    return ApiTarget(url, tok)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
