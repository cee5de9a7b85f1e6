"""Write durability across a Redis failover, and noticing that the primary changed.

Redis replicates asynchronously: a primary that dies right after answering a write can take that write with it,
and Sentinel then promotes a replica that never had it. The writes users rely on (job creation, checkpoint
commits, state transitions) therefore go through :func:`run_script` / :func:`execute_pipeline`: the write and a
``WAIT`` are sent on one connection, and the caller gets its answer only once a replica confirmed the write.

Policy (``TRAIND_REDIS_MIN_REPLICAS``):

- ``auto`` (default): wait for one replica when the primary has any connected; with none (a single
  ``redis://`` server, or a primary whose replica is down) the write is accepted as **degraded** (logged, and
  reported to the submitter) instead of blocking. A write that a connected replica did not confirm within
  ``TRAIND_REDIS_WAIT_TIMEOUT_S`` raises :class:`~jobs.errors.DurabilityError`.
- ``N`` >= 1: N replicas must confirm, else DurabilityError (writes stop while fewer replicas are up).
- ``0``: never wait (fastest; a failover can lose the last writes).

With Sentinel, a degraded write is also checked against the sentinels: a write that landed on a primary the
sentinels already replaced (a frozen old primary that woke up) raises DurabilityError instead of being lost
silently when that node is turned into a replica.

>>> # run_script(r, store._create, keys=[...], args=[...], what="job abc: create")
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.exceptions import AuthenticationError, AuthorizationError, NoScriptError, ResponseError

from jobs.contract import lua
from jobs.errors import DurabilityError, StalePrimaryError

if TYPE_CHECKING:
    from jobs.settings import CommonSettings

log = logging.getLogger("traind.redis")

_ROLE_CACHE_S = 1.0  # how long a primary's replica count is trusted before it is asked again
_ATTEMPTS = 4  # whole-write attempts on connection errors (each reconnect has its own retries inside redis-py)

@dataclass
class Durability:
    """The durability policy of one client (attached to it by :func:`jobs.redis.conn.connect`).

    >>> Durability(min_replicas=None).describe()
    'auto (wait for 1 replica when the primary has one, else degraded), timeout 2.0 s'
    """

    min_replicas: int | None = None  # None: auto
    wait_timeout_s: float = 2.0
    _roles: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _degraded: bool = field(default=False, repr=False)
    _had_replica: bool = field(default=False, repr=False)  # the primary keeps a replication backlog: one was there

    @classmethod
    def from_settings(cls, settings: CommonSettings | None) -> Durability:
        if settings is None:
            return cls()
        n = settings.redis_min_replicas
        return cls(min_replicas=None if n == "auto" else int(n), wait_timeout_s=settings.redis_wait_timeout_s)

    def describe(self) -> str:
        if self.min_replicas is None:
            mode = "auto (wait for 1 replica when the primary has one, else degraded)"
        elif self.min_replicas == 0:
            mode = "off (no WAIT)"
        else:
            mode = f"{self.min_replicas} replica(s) required"
        return f"{mode}, timeout {self.wait_timeout_s} s"

    @property
    def last(self) -> str:
        """How this thread's last durable write ended: 'replicated (n)', 'degraded: ...' or 'not waited'."""
        return getattr(self._local, "last", "not waited")

    def _note(self, status: str, expected: bool = True) -> None:
        self._local.last = status
        degraded = status.startswith("degraded")
        if degraded != self._degraded:  # log the start and the end of a degraded period, not every write
            self._degraded = degraded
            if degraded:  # a warning only where a replica was expected; one node (`traind up`) is a normal setup
                log.log(logging.WARNING if expected else logging.DEBUG,
                        "Redis durability degraded: %s; acknowledged writes are not replicated", status[10:])
            else:
                log.info("Redis durability restored: %s", status)

    def _replicas(self, conn: Any, fresh: bool = False) -> int:
        """Connected replicas of the primary behind ``conn`` (asked on that very connection, cached ~1 s)."""
        key = (str(getattr(conn, "host", "")), int(getattr(conn, "port", 0) or 0))
        hit = self._roles.get(key)
        if hit is not None and not fresh and time.monotonic() - hit[0] < _ROLE_CACHE_S:
            return hit[1]
        # INFO, not ROLE: ROLE is in @dangerous, which the documented ACL users may not run (docs/security.md).
        conn.send_command("INFO", "replication")
        try:
            info = conn.read_response()
        except ResponseError:  # a user without +info (a read-only one): its write is refused on its own anyway
            info = b""
        text = info.decode() if isinstance(info, bytes) else str(info)
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        # Only replicas that finished their sync acknowledge writes; one still loading the primary's snapshot
        # (say an old primary rejoining after a failover) would make every WAIT time out.
        online = [k for k, v in fields.items() if k.startswith("slave") and k[5:].isdigit() and "state=online" in v]
        n = len(online) if fields.get("role") == "master" else 0
        self._had_replica = self._had_replica or n > 0 or fields.get("repl_backlog_active", "0").strip() == "1"
        self._roles[key] = (time.monotonic(), n)
        return n

    def want(self, conn: Any) -> int:
        if self.min_replicas is not None:
            return self.min_replicas
        return 1 if self._replicas(conn) > 0 else 0


def replication_note(r: redis.Redis) -> str:
    """One phrase on the primary's replicas, for ``traind health`` (where a one-node setup is said, once).

    >>> # replication_note(r)   # 'single node: writes are not replicated'
    """
    pol = Durability()
    conn = r.connection_pool.get_connection()
    try:
        n = pol._replicas(conn)
    finally:
        r.connection_pool.release(conn)
    if n:
        return f"{n} replica(s) online"
    if pol._had_replica:
        return "no replica online (the primary had one): writes are not replicated until it is back"
    return "single node: writes are not replicated"


def policy_of(r: redis.Redis) -> Durability:
    pol = getattr(r, "durability", None)
    if pol is None:
        pol = Durability()
        try:
            r.durability = pol  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return pol


def run_script(r: redis.Redis, script: Script, *, keys: list[Any], args: list[Any], what: str,
               replay: bool = True) -> Any:
    """Run a registered Lua script as a durable write; returns its reply (raises DurabilityError, see module).

    ``replay``: after a lost connection, or a write that landed on a demoted primary, send the write again to the
    (new) primary. Pass False for a write decided on what the old primary showed (the supervisor's requeue of an
    expired lease): the caller must look again on the new primary instead.
    """
    return _execute(r, [("EVALSHA", script.sha, len(keys), *keys, *args)], what, {script.sha: script.script},
                    replay)[0]


def execute_pipeline(r: redis.Redis, pipe: redis.client.Pipeline, what: str) -> list[Any]:
    """Send a (non-transactional) pipeline's commands as one durable write; returns their raw replies."""
    sources = {s.sha: s.script for s in pipe.scripts}
    cmds = [tuple(args) for args, _options in pipe.command_stack]
    pipe.reset()
    return _execute(r, cmds, what, sources) if cmds else []


def _execute(r: redis.Redis, cmds: list[tuple[Any, ...]], what: str, sources: dict[str, str],
             replay: bool = True) -> list[Any]:
    pol = policy_of(r)
    pool = r.connection_pool
    backoff = ExponentialBackoff(cap=2.0, base=0.1)
    for attempt in range(_ATTEMPTS):
        conn = pool.get_connection()
        try:
            return _on_connection(r, pol, conn, cmds, what, sources)
        except NoScriptError:
            # First use on this server (or it restarted / failed over): the script did not run; load and redo.
            if attempt == _ATTEMPTS - 1:
                raise
            for src in sources.values():
                conn.send_command("SCRIPT", "LOAD", src)
                conn.read_response()
        except (AuthenticationError, AuthorizationError):
            raise
        except (redis.ConnectionError, redis.TimeoutError, StalePrimaryError) as e:
            # The primary went away mid-write, was demoted (READONLY arrives as ConnectionError with Sentinel), or
            # the write landed on a demoted primary: redo the whole write on a fresh connection, which asks the
            # sentinels for the primary; the new primary may never have seen it.
            conn.disconnect()
            if attempt == _ATTEMPTS - 1 or not replay:
                raise
            log.info("%s: write not kept (%s: %s); retrying it on the primary", what, type(e).__name__, e)
            time.sleep(backoff.compute(attempt + 1))
        finally:
            pool.release(conn)
    raise AssertionError("unreachable")


def _on_connection(r: redis.Redis, pol: Durability, conn: Any, cmds: list[tuple[Any, ...]], what: str,
                   sources: dict[str, str]) -> list[Any]:
    want = pol.want(conn)
    timeout_ms = max(1, int(pol.wait_timeout_s * 1000))
    full = cmds + ([("WAIT", want, timeout_ms)] if want else [])
    conn.send_packed_command(conn.pack_commands(full))
    replies: list[Any] = []
    error: ResponseError | None = None
    for _ in full:
        try:
            replies.append(conn.read_response())
        except ResponseError as e:  # read every reply first: the connection stays in sync
            replies.append(e)
            error = error or e
    if error is not None:
        if isinstance(error, NoScriptError) and not all(isinstance(x, NoScriptError) for x in replies[:len(cmds)]):
            # Some commands of the batch ran and others did not: redoing it all would apply the first ones twice.
            raise ResponseError(f"{what}: Lua scripts missing on the Redis server for part of a batch") from error
        raise error
    if not want:
        if pol.min_replicas == 0:
            pol._note("not waited")
            return replies
        _degraded(r, pol, conn, what, "the primary has no replica connected")
        return replies
    acked = int(replies.pop())
    if acked >= want:
        pol._note(f"replicated ({acked})")
        return replies
    if pol.min_replicas is None and pol._replicas(conn, fresh=True) == 0:
        # auto: the replica went away while we waited; same as having none.
        _degraded(r, pol, conn, what, "the primary's replica disconnected")
        return replies
    raise DurabilityError(
        f"{what}: written to the Redis primary but only {acked} of {want} replica(s) confirmed it within "
        f"{pol.wait_timeout_s} s (TRAIND_REDIS_WAIT_TIMEOUT_S); it may be lost if the primary fails now"
    )


def _degraded(r: redis.Redis, pol: Durability, conn: Any, what: str, why: str) -> None:
    manager = getattr(r, "sentinel_manager", None)
    target = getattr(r, "sentinel", None)
    if manager is not None and target is not None:
        # A primary with no replica may be an old primary that was frozen while the sentinels promoted another
        # node: a write there is lost when it is turned into a replica. Ask the sentinels who the primary is.
        try:
            current = manager.discover_master(target.master)
        except redis.ConnectionError:
            current = None
        here = (str(conn.host), int(conn.port))
        if current is None or (str(current[0]), int(current[1])) != here:
            conn.disconnect()  # the next command reconnects through the sentinels
            raise StalePrimaryError(
                f"{what}: written to Redis at {here[0]}:{here[1]}, which the sentinels no longer report as the "
                f"primary ({'none reachable' if current is None else f'{current[0]}:{current[1]}'}); the write is "
                "likely lost: retry it"
            )
    pol._note(f"degraded: {why}", expected=manager is not None or pol._had_replica)


@dataclass
class Observation:
    """One reading of the primary: its clock, uptime and identity, taken on one connection."""

    now_ms: int
    uptime_s: float
    run_id: str
    changed: bool  # a different server than the last observation (failover or restart)


class PrimaryWatch:
    """Notices that the supervisor now talks to a different Redis server (failover, or restart).

    Leases are absolute times on the primary's clock; a promoted replica's clock may differ. On a change the
    supervisor gives every running job one lease TTL on the new clock (:meth:`rebase_leases`): live workers renew
    within it, dead ones expire one TTL later; no lease expires at once and none lives longer than one TTL.

    >>> w = PrimaryWatch(); w.run_id is None
    True
    """

    def __init__(self) -> None:
        self.run_id: str | None = None

    def observe(self, r: redis.Redis) -> Observation:
        pipe = r.pipeline(transaction=False)  # one connection: the clock and the identity are the same server's
        pipe.time()
        pipe.info("server")
        (sec, usec), info = pipe.execute()
        run_id = str(info.get("run_id", ""))
        changed = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        return Observation(now_ms=int(sec) * 1000 + int(usec) // 1000, uptime_s=float(info.get("uptime_in_seconds", 0)),
                           run_id=run_id, changed=changed)

    @staticmethod
    def rebase_leases(r: redis.Redis, leases_key: str, ttl_ms: int) -> int:
        """Set every lease to now + ``ttl_ms`` on the current primary's clock; returns how many."""
        return int(r.eval(lua.REBASE_LEASES, 1, leases_key, int(ttl_ms)))
