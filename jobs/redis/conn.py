"""Redis connections that survive a Redis restart or a Sentinel failover: retries with exponential backoff,
primary discovery through Redis Sentinel, secrets never logged.

URLs: ``redis://`` / ``rediss://`` (TLS) for one server, or ``redis+sentinel://`` / ``rediss+sentinel://`` for a
primary watched by sentinels::

    redis+sentinel://[[user]:password@]host1:26379,host2:26379,host3:26379/<master-name>/<db>[?options]

The userinfo password is the data nodes' (primary and replicas); the sentinels' own credentials, when they have
``requirepass``, go in ``sentinel_username=`` / ``sentinel_password=``. TLS options (``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``) apply to sentinels and data nodes.

The URLs themselves (checking, redacting, the sentinel grammar) are :mod:`jobs.redis.urls`.

>>> # r = connect("redis+sentinel://:pw@a:26379,b/mymaster/2"); r.ping()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from jobs.errors import ConfigError
from jobs.redis.urls import SentinelTarget, check_redis_url, is_sentinel_url, parse_sentinel_url, redact_url

if TYPE_CHECKING:
    from jobs.settings import CommonSettings


class TraindRedis(redis.Redis):
    """A redis-py client that also carries traind's write-durability policy (see :mod:`jobs.redis.replication`)."""

    durability: Any = None
    sentinel: SentinelTarget | None = None


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


class _Sentinel(Sentinel):
    """redis-py's Sentinel, except that sentinels refusing our credentials is an AuthenticationError at once
    (redis-py folds it into MasterNotFoundError, a ConnectionError, which would be retried for half a minute)."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError:
            refused = 0
            for s in self.sentinels:
                try:
                    s.ping()
                except (AuthenticationError, AuthorizationError, redis.ResponseError):
                    refused += 1
                except (ConnectionError, TimeoutError):
                    pass
            if refused and refused == len(self.sentinels):
                raise AuthenticationError("every sentinel refused the sentinel credentials (sentinel_username / "
                                          "sentinel_password in the redis+sentinel:// URL)") from None
            raise


def connect(url: str, retries: int = 20, socket_timeout_s: float | None = None,
            settings: CommonSettings | None = None) -> TraindRedis:
    """A client for ``url`` that retries dropped connections with exponential backoff (capped at 2 s) instead of
    failing at once; with a ``redis+sentinel://`` URL it asks the sentinels for the primary on every (re)connect,
    so after a failover it follows the new primary by itself.

    ``settings`` supplies the socket timeout and the durability policy (``TRAIND_REDIS_MIN_REPLICAS``,
    ``TRAIND_REDIS_WAIT_TIMEOUT_S``); without it, the defaults apply.

    >>> # r = connect("redis+sentinel://s1:26379,s2:26379,s3:26379/traind/0"); r.ping()
    """
    from jobs.redis.replication import Durability

    check_redis_url(url)  # one line, password redacted, before any parser can quote part of it
    if socket_timeout_s is None:
        socket_timeout_s = settings.redis_socket_timeout_s if settings is not None else 30.0
    common: dict[str, Any] = dict(
        retry=_Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=5.0,
        health_check_interval=10,
    )
    client: TraindRedis
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        tls = {k: v for k, v in target.data_kwargs.items() if k.startswith("ssl")}
        # A dead sentinel must not stall discovery: no retries and a short timeout per sentinel, the next is asked.
        sentinel_kwargs: dict[str, Any] = dict(
            socket_timeout=min(socket_timeout_s or 2.0, 2.0), socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0), username=target.sentinel_username, password=target.sentinel_password,
            ssl=target.tls, **tls,
        )
        sentinel = _Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)
        data = {**common, **target.data_kwargs}
        client = sentinel.master_for(
            target.master, redis_class=TraindRedis, db=target.db, username=target.username,
            password=target.password, ssl=target.tls, check_connection=True, **data,
        )
        client.sentinel = target
        client.sentinel_manager = sentinel  # type: ignore[attr-defined]
    else:
        try:
            client = TraindRedis.from_url(url, **common)
        except ValueError:  # redis-py's message can quote part of the URL, the password included: never show it
            raise ConfigError(f"TRAIND_REDIS_URL {redact_url(url)} is not a valid Redis URL; percent-encode special "
                              "characters of the password") from None
    client.durability = Durability.from_settings(settings)
    return client


def connect_async(url: str, health_check_interval_s: int = 30) -> Any:
    """An asyncio client (``redis.asyncio``) for ``url``, following the primary through the sentinels for
    ``redis+sentinel://`` URLs; for read paths such as ``traind serve``'s event streams.

    >>> # r = connect_async("redis+sentinel://s1,s2,s3/traind/0"); await r.ping()
    """
    import redis.asyncio as aredis
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    if not is_sentinel_url(url):
        return aredis.Redis.from_url(url, health_check_interval=health_check_interval_s)
    target = parse_sentinel_url(url)
    tls = {k: v for k, v in target.data_kwargs.items() if k.startswith("ssl")}
    sentinel = AsyncSentinel(target.sentinels, sentinel_kwargs=dict(
        socket_timeout=2.0, socket_connect_timeout=2.0, username=target.sentinel_username,
        password=target.sentinel_password, ssl=target.tls, **tls))
    return sentinel.master_for(target.master, db=target.db, username=target.username, password=target.password,
                               ssl=target.tls, check_connection=True, health_check_interval=health_check_interval_s,
                               **target.data_kwargs)
