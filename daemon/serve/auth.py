"""Bearer-token auth and rights: who a request is (:class:`Principal`: a token's name and role) and what it may do.

Tokens come from two places, both checked on every request:

* the environment, as before: ``TRAIND_API_TOKEN`` is an admin named ``admin``, each of ``TRAIND_API_READ_TOKENS``
  a read token named ``read`` (compared in constant time);
* Redis, ``traind token add NAME --role read|submit|admin`` (:mod:`jobs.ops.tokens`): only their sha256 is stored;
  serve checks their version counter at most :data:`STORED_CACHE_S` after its last check and re-reads them when it
  changed, so adding or revoking one needs no restart and a revoked token is refused within about a second.

Roles: ``read`` may only GET; ``submit`` may also submit (its jobs' owner is the token's name) and cancel or retry
*its own* jobs; ``admin`` may do everything, including submitting for another owner. The method check (a read
token writes nothing) is made by :mod:`daemon.serve.guard` from the headers, before a body is read; the rest by the
route dependencies here (:func:`read`, :func:`write`, :func:`admin`, :func:`job_actor`), the one place rights are
decided.

Tokens are never echoed, logged or put in URLs (the dashboard sends them in the ``Authorization`` header, SSE
included, because it reads streams with ``fetch`` instead of ``EventSource``). Wrong tokens are rate-limited per
client address (:class:`FailureLimiter`); off loopback, weak env tokens refuse to start (:func:`check_strength`).

>>> # @router.post("/jobs/{job_id}/cancel")  def cancel(job_id: str, who: Annotated[Principal, Depends(job_actor)])
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, NamedTuple

from fastapi import HTTPException, Request, status

from jobs.contract import keys
from jobs.contract.ids import validate_job_id
from jobs.errors import ConfigError, InvalidJobIdError
from jobs.ops.tokens import ENV_ADMIN_NAME, ENV_READ_NAME, USED_WRITE_EVERY_MS, Role, digest, records_of
from jobs.settings import ServeSettings

log = logging.getLogger("traind.serve.auth")

MIN_TOKEN_CHARS = 16  # off loopback; `openssl rand -hex 24` gives 48
MIN_TOKEN_DISTINCT = 6  # refuses "aaaaaaaaaaaaaaaa" and "abababab...", never a random token of 16+ characters


RECHECK_S = 0.1  # an unknown token re-reads the version at most this often (a flood of wrong tokens: 10 GETs/s)
STORED_CACHE_S = 1.0  # how stale serve's copy of the stored tokens may get: the delay before a revocation bites
STORED_READ_TIMEOUT_S = 5.0
STORED_FULL_RELOAD_S = 60.0  # the whole hash at least this often, changed version or not
STORED_STALE_MAX_S = 30.0  # Redis unreachable this long: stored tokens answer 503 (a revocation might be unseen)


class Access(str, Enum):
    """What a request needs at the gate: to read (GET/HEAD) or to write (any other method)."""

    READ = "read"
    WRITE = "write"


class Principal(NamedTuple):
    """Who made a request: the token's name (the owner of the jobs it submits) and its role."""

    name: str
    role: Role

    def may(self, need: Access) -> bool:
        return need is Access.READ or self.role is not Role.READ


# Reads the stored tokens: given the version serve holds (None: read anyway), returns the current version and the
# API_TOKENS hash as HGETALL gives it, or None for the hash when the version is the one held (nothing changed).
Source = Callable[[Any], Awaitable[tuple[Any, dict[Any, Any] | None]]]
# Records a use of stored token `name` at `ms`.
UsedSink = Callable[[str, int], Awaitable[None]]


class StoredUnavailable(Exception):
    """The stored tokens could not be read for longer than STORED_STALE_MAX_S."""


class Tokens:
    """The env tokens (bytes, for ``hmac.compare_digest``) and a cache of the stored ones (by sha256).

    ``source``/``used_sink`` read and touch Redis (:func:`redis_source`); without them only env tokens exist.
    Used from the event loop only (the guard), so the lock is an asyncio one.
    """

    def __init__(self, settings: ServeSettings, source: Source | None = None, used_sink: UsedSink | None = None,
                 cache_s: float = STORED_CACHE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.full = [settings.api_token.get_secret_value().encode()] if settings.api_token else []
        self.read_only = [t.get_secret_value().encode() for t in settings.api_read_tokens]
        self.source, self.used_sink, self.cache_s, self.clock = source, used_sink, cache_s, clock
        self.stored: dict[str, Principal] = {}  # sha256 -> principal
        self.loaded_at: float | None = None  # clock() of the last successful read
        self.full_at = -math.inf  # clock() of the last read of the whole hash
        self.version: Any = None  # keys.API_TOKENS_VERSION as last read
        self.tried_at = -math.inf  # clock() of the last read attempt (failures retry after cache_s too)
        self.rechecked_at = -math.inf  # clock() of the last re-read for an unknown token
        self.used_written: dict[str, int] = {}  # name -> ms of the last last-used write
        self._lock = asyncio.Lock()

    def env_principal(self, presented: str) -> Principal | None:
        """The env token ``presented`` is (``admin`` or ``read``), or None."""
        p = presented.encode()
        # Check every token (no early exit) so timing does not tell which list matched.
        full = any([hmac.compare_digest(p, t) for t in self.full])
        ro = any([hmac.compare_digest(p, t) for t in self.read_only])
        return (Principal(ENV_ADMIN_NAME, Role.ADMIN) if full else Principal(ENV_READ_NAME, Role.READ) if ro
                else None)

    async def refresh(self, max_age_s: float | None = None) -> None:
        """Re-read the stored tokens when the copy is older than ``max_age_s`` (default ``cache_s``; one reader at a
        time)."""
        max_age = self.cache_s if max_age_s is None else max_age_s
        if self.source is None or self.clock() - self.tried_at < max_age:
            return
        async with self._lock:
            if self.clock() - self.tried_at < max_age:  # another request refreshed while this one waited
                return
            self.tried_at = self.clock()
            try:
                # Only the version while nothing changed (one GET a second); the whole hash when it changed, and
                # every STORED_FULL_RELOAD_S whatever the version says (a hand edit of the hash is seen too).
                # Bounded in time: a frozen Redis must not hold every request behind this lock.
                full = self.clock() - self.full_at >= STORED_FULL_RELOAD_S
                version, raw = await asyncio.wait_for(self.source(None if full else self.version),
                                                      STORED_READ_TIMEOUT_S)
            except Exception as e:  # Redis down: keep the last copy for a while (see principal())
                log.warning("cannot read the stored API tokens: %s: %s", type(e).__name__, e)
                return
            if raw is not None:
                self.stored = {rec.sha256: Principal(rec.name, rec.role) for rec in records_of(raw)}
                self.full_at = self.clock()
            self.version, self.loaded_at = version, self.clock()

    def principal(self, presented: str) -> Principal | None:
        """Who ``presented`` is, or None for no token of either kind. StoredUnavailable when it is no env token and
        the stored tokens could not be read for STORED_STALE_MAX_S (refusing it as wrong would rate-limit a
        legitimate user for Redis' outage)."""
        env = self.env_principal(presented)
        stored = self.stored.get(digest(presented))  # a dict lookup of a hash: timing tells nothing of the token
        if env is not None:
            return env
        if self.source is not None and (self.loaded_at is None
                                        or self.clock() - self.loaded_at > STORED_STALE_MAX_S):
            raise StoredUnavailable
        return stored

    async def recheck_unknown(self, authorization: str | None) -> bool:
        """A bearer token that is no token serve knows may be one added since the last read: check the version again
        at once (at most every :data:`RECHECK_S`), so a token works as soon as `traind token add` printed it. True
        when the stored tokens were read again."""
        presented = bearer(authorization or "")
        if presented is None or self.source is None:
            return False
        try:
            if self.principal(presented) is not None:
                return False
        except StoredUnavailable:
            return False
        if self.clock() - self.rechecked_at < RECHECK_S:
            return False
        self.rechecked_at = self.clock()
        await self.refresh(0.0)
        return True

    async def touch(self, who: Principal, now_ms: int) -> None:
        """Record a use of a stored token for ``traind token list``, at most once a minute per name."""
        if self.used_sink is None or who.name in (ENV_ADMIN_NAME, ENV_READ_NAME):
            return
        if now_ms - self.used_written.get(who.name, -USED_WRITE_EVERY_MS) < USED_WRITE_EVERY_MS:
            return
        self.used_written[who.name] = now_ms
        if len(self.used_written) > 10_000:  # bounded like the stored tokens themselves
            self.used_written.clear()
        try:
            await self.used_sink(who.name, now_ms)
        except Exception as e:  # a hint only: never fail a request for it
            log.debug("cannot record the use of token %s: %s", who.name, type(e).__name__)


def redis_source(aconn: Any) -> tuple[Source, UsedSink]:
    """Read and touch the stored tokens through serve's async Redis connection."""

    async def source(known: Any) -> tuple[Any, dict[Any, Any] | None]:
        version = await aconn.get(keys.API_TOKENS_VERSION)
        if known is not None and version == known:
            return version, None
        async with aconn.pipeline(transaction=True) as pipe:  # the hash and the version it is at, together
            version, raw = await pipe.get(keys.API_TOKENS_VERSION).hgetall(keys.API_TOKENS).execute()
        return version, raw

    async def used_sink(name: str, ms: int) -> None:
        if await aconn.hexists(keys.API_TOKENS, name):  # never re-create the hint of a token revoked meanwhile
            await aconn.hset(keys.API_TOKENS_USED, name, ms)

    return source, used_sink


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
READ_ONLY = Refusal(status.HTTP_403_FORBIDDEN, "this token is read-only (role read): submit, cancel and retry need "
                    "a submit or admin token", {})
UNAVAILABLE = Refusal(status.HTTP_503_SERVICE_UNAVAILABLE, "cannot check the token: the stored API tokens are "
                      "unreadable (Redis unreachable); retry shortly", {"Retry-After": "5"})


def judge(tokens: Tokens, authorization: str, need: Access) -> Principal | Refusal:
    """Who an ``Authorization`` header value is for a request needing ``need``, or why it is refused."""
    presented = bearer(authorization)
    if presented is None:
        return MISSING
    try:
        got = tokens.principal(presented)
    except StoredUnavailable:
        return UNAVAILABLE
    if got is None:
        return INVALID
    if not got.may(need):
        return READ_ONLY
    return got


# -- route dependencies: the one place rights are decided --------------------------------------------------------------
def _forbid(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail)


def _principal(request: Request, need: Access) -> Principal:
    """The principal the guard authenticated (``request.state.principal``); judged here when there is none (an app
    without the guard, e.g. a test's)."""
    who = getattr(request.state, "principal", None)
    if who is None:
        verdict = judge(request.app.state.tokens, request.headers.get("authorization", ""), need)
        if isinstance(verdict, Refusal):
            raise HTTPException(verdict.status, verdict.detail, headers=verdict.headers or None)
        who = verdict
    if not who.may(need):
        raise HTTPException(READ_ONLY.status, READ_ONLY.detail)
    return who


def read(request: Request) -> Principal:
    """Dependency: any valid token."""
    return _principal(request, Access.READ)


def write(request: Request) -> Principal:
    """Dependency: a submit or admin token (submit, uploads; what a route does with another owner's job it checks
    with :func:`job_actor`)."""
    return _principal(request, Access.WRITE)


submit = write


def admin(request: Request) -> Principal:
    """Dependency: an admin token."""
    who = _principal(request, Access.WRITE)
    if who.role is not Role.ADMIN:
        raise _forbid(f"token {who.name!r} has role {who.role.value}: this needs an admin token")
    return who


def job_actor(job_id: str, request: Request) -> Principal:
    """Dependency of a change to one job (cancel, retry): an admin token, or a submit token whose name is the job's
    owner. An unknown or malformed id passes here and gets the route's own 404/422."""
    who = _principal(request, Access.WRITE)
    if who.role is Role.ADMIN:
        return who
    try:
        jid = validate_job_id(job_id)
    except InvalidJobIdError:
        return who
    r = request.app.state.store.r
    owner = r.hget(keys.job(jid), "owner")
    if owner is None:
        if not r.exists(keys.job(jid)):
            return who
        raise _forbid(f"job {jid} records no owner: only an admin token may change it (token {who.name!r} has "
                      f"role {who.role.value})")
    owner_text = owner.decode(errors="replace") if isinstance(owner, bytes) else str(owner)
    if owner_text != who.name:
        raise _forbid(f"job {jid} belongs to {owner_text[:64]!r}: token {who.name!r} (role {who.role.value}) may "
                      "only cancel or retry its own jobs")
    return who


def owner_for(who: Principal, requested: str | None) -> str:
    """The owner a submit records: the token's name; an admin token may name another owner, a submit token only
    its own (403 otherwise, rather than silently ignoring what the caller asked for)."""
    if requested is None or requested == who.name:
        return who.name
    if who.role is not Role.ADMIN:
        raise _forbid(f"token {who.name!r} (role {who.role.value}) submits as owner {who.name!r}; only an admin "
                      f"token may submit for another owner ({requested[:64]!r})")
    return requested
