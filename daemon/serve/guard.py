"""The gate in front of every route of ``traind serve``: a pure ASGI middleware, so it decides before anything reads
a request's body (FastAPI resolves a body before a route's dependencies, the auth check included).

For each HTTP request, in order:

1. **Rate limit.** A client address that sent more than ``TRAIND_AUTH_FAILURES_MAX`` wrong tokens within
   ``TRAIND_AUTH_FAILURES_WINDOW_S`` gets 429 with ``Retry-After`` for every request carrying a token (even a valid
   one: otherwise a guess that hit would tell) until its bucket refills.
2. **Authentication from the headers.** Every path but the public ones (``GET`` of the dashboard's files,
   ``/healthz``, ``/openapi.json``) needs a token (an env one or a stored one, :mod:`daemon.serve.auth`), any
   method but ``GET``/``HEAD`` a submit or admin one: 401/403 before a byte of the body is read. The token's
   :class:`~daemon.serve.auth.Principal` goes to the routes as ``request.state.principal``; what a submit token
   may do to which job the routes' dependencies decide (``auth.job_actor``).
3. **Body size.** A declared ``Content-Length`` over ``TRAIND_MAX_BODY_BYTES`` is 413 at once; a body without one
   (chunked) is counted while it streams and refused with 413 as it passes the limit.
4. **Headers** on every response: a Content-Security-Policy allowing only traind's own files (no inline script or
   style, no framing), ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy``.

A refusal closes the connection (``Connection: close``): a client that keeps sending is cut off, not read.

>>> # app.add_middleware(Guard, tokens=auth.Tokens(settings), limiter=FailureLimiter(20, 60.0), max_body_bytes=2**21)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.serve.auth import (
    INVALID,
    Access,
    FailureLimiter,
    Principal,
    Refusal,
    Tokens,
    judge,
    retry_after_header,
)

PUBLIC_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
READ_METHODS = frozenset({"GET", "HEAD"})

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def _client_addr(scope: Scope) -> str:
    """The client's address, as the wrong-token limiter counts it."""
    return str((scope.get("client") or ("unknown", 0))[0])


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises an HTTPException met while
    reading a body; the gate answers it where nothing else did)."""

    def __init__(self, limit: int, received: str, name: str = "TRAIND_MAX_BODY_BYTES") -> None:
        super().__init__(413, f"request body of {received} exceeds {name}={limit}",
                         headers={"Connection": "close"})


def is_public(method: str, path: str) -> bool:
    """Whether a request needs no token: a GET/HEAD of the dashboard's files, /healthz or the OpenAPI schema."""
    return method in READ_METHODS and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class Guard:
    """The ASGI middleware described in the module docstring (``clock`` is injectable for tests)."""

    def __init__(self, app: ASGIApp, tokens: Tokens, limiter: FailureLimiter, max_body_bytes: int,
                 clock: Callable[[], float] = time.monotonic, body_limits: Mapping[str, int] | None = None) -> None:
        self.app, self.tokens, self.limiter = app, tokens, limiter
        self.max_body_bytes, self.clock = max_body_bytes, clock
        self.body_limits = dict(body_limits or {})  # path prefix -> its own bound (uploads: TRAIND_MAX_UPLOAD_BYTES)

    def limit_for(self, path: str) -> int:
        """The body bound of a path: its prefix's in ``body_limits``, else TRAIND_MAX_BODY_BYTES."""
        return next((n for prefix, n in self.body_limits.items() if path.startswith(prefix)), self.max_body_bytes)

    def refusal(self, scope: Scope) -> Refusal | None:
        """Why a request is refused from its method, path and headers alone, or None to let it through (the
        authenticated principal, if any, is put in ``scope["state"]["principal"]``)."""
        method, path = scope["method"], scope["path"]
        if not is_public(method, path):
            authorization = _header(scope, b"authorization")
            addr = _client_addr(scope)
            if authorization is not None:
                wait = self.limiter.retry_after(addr, self.clock())
                if wait is not None:
                    return Refusal(429, f"too many wrong tokens from {addr}; retry in {retry_after_header(wait)} s",
                                   {"Retry-After": retry_after_header(wait)})
            verdict = judge(self.tokens, authorization or "", Access.READ if method in READ_METHODS else Access.WRITE)
            if isinstance(verdict, Refusal):
                return verdict  # an INVALID one counts as a guess in __call__ (a missing token is not one)
            scope.setdefault("state", {})["principal"] = verdict
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return Refusal(400, f"invalid Content-Length {declared[:40]!r}", {})
            if int(declared) > self.limit_for(path):
                return Refusal(413, f"request body of {int(declared)} bytes exceeds "
                               f"{self._limit_name(path)}={self.limit_for(path)}", {})
        return None

    def _limit_name(self, path: str) -> str:
        return "TRAIND_MAX_BODY_BYTES" if self.limit_for(path) == self.max_body_bytes else "TRAIND_MAX_UPLOAD_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (traind routes no websockets)
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {k.lower() for k, _ in message.get("headers", ())}
                message = {**message, "headers": [*message.get("headers", ()),
                                                  *(h for h in SECURITY_HEADERS if h[0] not in present)]}
            await send(message)

        if not is_public(scope["method"], scope["path"]):
            await self.tokens.refresh()  # the stored tokens, at most STORED_CACHE_S old
        refused = self.refusal(scope)
        if refused is INVALID:
            # Perhaps a token added since the last read: look again (rate-limited) before counting it as a guess.
            if await self.tokens.recheck_unknown(_header(scope, b"authorization")):
                refused = self.refusal(scope)
            if refused is INVALID:
                self.limiter.failed(_client_addr(scope), self.clock())
        who = scope.get("state", {}).get("principal")
        if isinstance(who, Principal):
            await self.tokens.touch(who, int(time.time() * 1000))
        if refused is not None:
            await _answer(send_with_headers, refused)
            return
        received, limit, name = 0, self.limit_for(scope["path"]), self._limit_name(scope["path"])

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, f"more than {limit} bytes", name)
            return message

        try:
            await self.app(scope, receive_counted, send_with_headers)
        except BodyTooLarge as e:  # raised where no exception handler turned it into the 413 already
            if started:
                raise
            await _answer(send_with_headers, Refusal(413, str(e.detail), {}))


async def _answer(send: Send, refusal: Refusal) -> None:
    body = json.dumps({"detail": refusal.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *((k.lower().encode(), v.encode()) for k, v in refusal.headers.items())]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
