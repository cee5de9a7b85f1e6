"""Which traind API a client or CLI talks to: :func:`resolve_target`.

Precedence (:func:`jobs.config_file.resolve`): explicit arguments, then ``TRAIND_API_URL`` + ``TRAIND_API_TOKEN``
(or ``TRAIND_REDIS_URL``: Redis), then the config file's context. None when the choice is Redis: the caller uses
Redis as before.

>>> resolve_target("http://127.0.0.1:8600/", "t0ken", env={})
ApiTarget(url='http://127.0.0.1:8600', token='***')
>>> resolve_target(redis_url="redis://127.0.0.1:6379/0", env={}) is None
True
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from jobs.errors import ConfigError

log = logging.getLogger("traind.remote")
URL_ENV, TOKEN_ENV, CA_ENV = "TRAIND_API_URL", "TRAIND_API_TOKEN", "TRAIND_API_CA_BUNDLE"


@dataclass(frozen=True)
class ApiTarget:
    """An API base URL (no trailing slash) and its bearer token (never shown in reprs or messages)."""

    url: str
    token: str = field(repr=False)
    ca_bundle: str | None = None  # PEM file of the CAs that verify the server (a private CA); None: the system's

    def __repr__(self) -> str:
        return f"ApiTarget(url={self.url!r}, token='***')"

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies the server's certificate with (verification is always on): True (httpx's default
        CAs) or a context trusting ``ca_bundle``'s CAs. ConfigError (one line) when the bundle cannot be read."""
        if self.ca_bundle is None:
            return True
        try:
            return ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{CA_ENV}: cannot load the CA bundle {self.ca_bundle}: "
                              f"{getattr(e, 'strerror', None) or e}") from None


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


def resolve_target(api_url: str | None = None, token: str | None = None, env: Mapping[str, str] | None = None,
                   redis_url: str | None = None, storage: str | None = None) -> ApiTarget | None:
    """The API to use, or None (talk to Redis): :func:`jobs.config_file.resolve`'s choice (arguments, then the
    environment, then the context). A URL without a token is a ConfigError naming what to set."""
    from jobs import config_file

    chosen = config_file.resolve(api_url=api_url, token=token, redis_url=redis_url, storage=storage, env=env)
    if isinstance(chosen, config_file.Local):
        return None
    if not chosen.token:
        raise ConfigError(f"{chosen.api_url} ({chosen.source}) but no token is given: set {TOKEN_ENV}, pass "
                          "token=..., or give the context a token_file")
    url = check_url(chosen.api_url)
    parts = urlsplit(url)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        log.warning("%s is plain http to %s: the token crosses the network unencrypted; put TLS in front "
                    "(docs/deploying.md)", URL_ENV, parts.hostname)
    return ApiTarget(url, chosen.token, chosen.ca_bundle)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
