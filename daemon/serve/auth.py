"""Bearer-token auth: ``TRAIND_API_TOKEN`` may do everything, ``TRAIND_API_READ_TOKENS`` may only read.

Tokens are compared in constant time and never echoed, logged or put in URLs (the dashboard sends them in the
``Authorization`` header, SSE included, because it reads streams with ``fetch`` instead of ``EventSource``). Every
request is authenticated from its headers by :mod:`daemon.serve.guard` before its body is read; wrong tokens are
rate-limited per client address (:class:`FailureLimiter`); off loopback, weak tokens refuse to start
(:func:`check_strength`).

>>> # @router.get("/x", dependencies=[Depends(auth.read)])
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections import OrderedDict
from enum import Enum
from typing import NamedTuple

from fastapi import HTTPException, Request, status

from jobs.errors import ConfigError
from jobs.settings import ServeSettings

MIN_TOKEN_CHARS = 16  # off loopback; `openssl rand -hex 24` gives 48
MIN_TOKEN_DISTINCT = 6  # refuses "aaaaaaaaaaaaaaaa" and "abababab...", never a random token of 16+ characters


class Access(str, Enum):
    READ = "read"
    WRITE = "write"


class Tokens:
    """The configured tokens (as bytes, for ``hmac.compare_digest``)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.full = [settings.api_token.get_secret_value().encode()] if settings.api_token else []
        self.read_only = [t.get_secret_value().encode() for t in settings.api_read_tokens]

    def access(self, presented: str) -> Access | None:
        p = presented.encode()
        # Check every token (no early exit) so timing does not tell which list matched.
        full = any([hmac.compare_digest(p, t) for t in self.full])
        ro = any([hmac.compare_digest(p, t) for t in self.read_only])
        return Access.WRITE if full else Access.READ if ro else None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); a host name or ``0.0.0.0`` is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_strength(settings: ServeSettings) -> None:
    """Refuse to serve off loopback with a token guessable in practice (ConfigError naming the setting, never the
    token). On loopback any token goes: only local users reach it.

    >>> check_strength(ServeSettings(host="127.0.0.1", api_token="x"))
    """
    if is_loopback(settings.host):
        return
    named = [("TRAIND_API_TOKEN", settings.api_token)] if settings.api_token else []
    named += [(f"TRAIND_API_READ_TOKENS[{i}]", t) for i, t in enumerate(settings.api_read_tokens)]
    weak = [name for name, t in named if len(v := t.get_secret_value()) < MIN_TOKEN_CHARS
            or len(set(v)) < MIN_TOKEN_DISTINCT]
    if weak:
        raise ConfigError(f"{', '.join(weak)}: too weak to serve on {settings.host} (not loopback): tokens need at "
                          f"least {MIN_TOKEN_CHARS} characters, {MIN_TOKEN_DISTINCT} of them different; make one "
                          "with `openssl rand -hex 24`")


class FailureLimiter:
    """Wrong tokens per client address: a token bucket of ``limit`` failures refilled over ``window_s``.

    Memory is bounded: at most ``max_addresses`` buckets (least recently failed dropped first; a full bucket is
    forgotten). Used from the event loop only, so no lock.

    >>> lim = FailureLimiter(limit=2, window_s=60.0)
    >>> lim.failed("10.0.0.1", now=0.0); lim.failed("10.0.0.1", now=0.0)
    >>> lim.retry_after("10.0.0.1", now=0.0), lim.retry_after("10.0.0.2", now=0.0)
    (30.0, None)
    """

    def __init__(self, limit: int, window_s: float, max_addresses: int = 10_000) -> None:
        self.limit, self.window_s, self.max_addresses = limit, window_s, max_addresses
        self.rate = limit / window_s  # failures forgiven per second
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens left, when)

    def _tokens(self, addr: str, now: float) -> float:
        left, when = self._buckets.get(addr, (float(self.limit), now))
        return min(float(self.limit), left + (now - when) * self.rate)

    def retry_after(self, addr: str, now: float) -> float | None:
        """Seconds until ``addr`` may try a token again, or None when it may now."""
        if addr not in self._buckets:
            return None
        tokens = self._tokens(addr, now)
        if tokens >= self.limit:
            del self._buckets[addr]
            return None
        return None if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, addr: str, now: float) -> None:
        """Record one wrong token from ``addr``."""
        tokens = max(0.0, self._tokens(addr, now) - 1)
        self._buckets[addr] = (tokens, now)
        self._buckets.move_to_end(addr)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up (at least 1)."""
    return str(max(1, math.ceil(seconds)))


def bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Refusal(NamedTuple):
    """Why a request is refused: its status, its ``{"detail": ...}`` and its headers."""

    status: int
    detail: str
    headers: dict[str, str]


MISSING = Refusal(status.HTTP_401_UNAUTHORIZED, "missing bearer token: send 'Authorization: Bearer <token>'",
                  {"WWW-Authenticate": "Bearer"})
INVALID = Refusal(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                  {"WWW-Authenticate": 'Bearer error="invalid_token"'})
READ_ONLY = Refusal(status.HTTP_403_FORBIDDEN, "this token is read-only; submit/cancel/retry need TRAIND_API_TOKEN", {})


def judge(tokens: Tokens, authorization: str, need: Access) -> Access | Refusal:
    """The access an ``Authorization`` header value grants for a request needing ``need``, or why it is refused."""
    presented = bearer(authorization)
    if presented is None:
        return MISSING
    got = tokens.access(presented)
    if got is None:
        return INVALID
    if need is Access.WRITE and got is not Access.WRITE:
        return READ_ONLY
    return got


def _check(request: Request, need: Access) -> Access:
    verdict = judge(request.app.state.tokens, request.headers.get("authorization", ""), need)
    if isinstance(verdict, Refusal):
        raise HTTPException(verdict.status, verdict.detail, headers=verdict.headers or None)
    return verdict


def read(request: Request) -> Access:
    """Dependency: any valid token."""
    return _check(request, Access.READ)


def write(request: Request) -> Access:
    """Dependency: the full-access token."""
    return _check(request, Access.WRITE)
