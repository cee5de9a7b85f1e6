"""Bearer-token auth: ``TRAIND_API_TOKEN`` may do everything, ``TRAIND_API_READ_TOKENS`` may only read.

Tokens are compared in constant time and never echoed, logged or put in URLs (the dashboard sends them in the
``Authorization`` header, SSE included, because it reads streams with ``fetch`` instead of ``EventSource``).

>>> # @router.get("/x", dependencies=[Depends(auth.read)])
"""

from __future__ import annotations

import hmac
from enum import Enum

from fastapi import HTTPException, Request, status

from jobs.settings import ServeSettings


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


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _check(request: Request, need: Access) -> Access:
    tokens: Tokens = request.app.state.tokens
    presented = _presented(request)
    if presented is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    got = tokens.access(presented)
    if got is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if need is Access.WRITE and got is not Access.WRITE:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token is read-only; submit/cancel/retry need "
                            "TRAIND_API_TOKEN")
    return got


def read(request: Request) -> Access:
    """Dependency: any valid token."""
    return _check(request, Access.READ)


def write(request: Request) -> Access:
    """Dependency: the full-access token."""
    return _check(request, Access.WRITE)
