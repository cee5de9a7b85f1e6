"""Redis URLs: the default, checking and redacting them, and the ``redis+sentinel://`` grammar.

Pure string handling (no connection, no settings): :mod:`jobs.settings` checks ``TRAIND_REDIS_URL`` with it, and
:mod:`jobs.redis.conn` connects to what it parses.

>>> parse_sentinel_url("redis+sentinel://:pw@a:26379,b/mymaster/2").sentinels
[('a', 26379), ('b', 26379)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.connection import parse_url

from jobs.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # when neither --redis-url nor TRAIND_REDIS_URL is given
# Query parameters that carry secrets (redis-py accepts ``?password=...`` and ``?ssl_password=...``).
_SECRET_PARAM = re.compile(r"(?i)((?:^|&)[^&=]*password)=[^&]*")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
_SENTINEL_ONLY = ("sentinel_username", "sentinel_password")
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_path",
               "ssl_password")
_DATA_PARAMS = ("socket_timeout", "socket_connect_timeout", "health_check_interval", "client_name")


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL: where the sentinels are and which primary (and db) to use."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    data_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)  # TLS/socket options for all nodes


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(
        f"invalid Redis Sentinel URL {redact_url(url)!r}: {why}; expected "
        "redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/<master-name>/<db> "
        "(rediss+sentinel:// for TLS)"
    )


def _host_port(url: str, item: str) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise _bad(url, "empty sentinel address in the host list")
    if item.startswith("["):  # [ipv6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep:
            raise _bad(url, f"unclosed '[' in sentinel address {item!r}")
        port_s = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise _bad(url, f"unexpected text after ']' in sentinel address {item!r}")
    else:
        host, _, port_s = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise _bad(url, f"sentinel address {item!r} has no host")
    if not port_s:
        return host, DEFAULT_SENTINEL_PORT
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise _bad(url, f"sentinel port {port_s!r} in {item!r} is not a number in 1-65535")
    return host, int(port_s)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://`` / ``rediss+sentinel://``; raises ConfigError naming what is wrong.

    >>> t = parse_sentinel_url("rediss+sentinel://app:pw@s1:26379,s2:26380/main/0?sentinel_password=x")
    >>> (t.master, t.db, t.tls, t.username, t.sentinel_password)
    ('main', 0, True, 'app', 'x')
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise _bad(url, f"scheme {scheme!r} is not one of {', '.join(SENTINEL_SCHEMES)}")
    tls = scheme.lower() == "rediss+sentinel"
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    sentinels = [_host_port(url, h) for h in hosts.split(",")]
    parts = [p for p in path.split("/")]
    if not parts or not parts[0]:
        raise _bad(url, "no master name (the path's first part)")
    if len(parts) > 2 and any(parts[2:]):
        raise _bad(url, f"unexpected path {path!r} after /<master-name>/<db>")
    master = unquote(parts[0])
    db_s = parts[1] if len(parts) > 1 else ""
    if db_s and not db_s.isdigit():
        raise _bad(url, f"database {db_s!r} is not a number")
    db = int(db_s) if db_s else 0
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - set(_SENTINEL_ONLY) - set(_TLS_PARAMS) - set(_DATA_PARAMS))
    if unknown:
        raise _bad(url, f"unknown option(s) {', '.join(unknown)} (known: "
                        f"{', '.join(_SENTINEL_ONLY + _TLS_PARAMS + _DATA_PARAMS)})")
    if not tls and any(k in params for k in _TLS_PARAMS):
        raise _bad(url, "TLS options given to redis+sentinel:// (use rediss+sentinel:// for TLS)")
    # The same option parsing as rediss:// (cert_reqs, booleans, numbers), from redis-py itself.
    data_query = urlencode({k: v for k, v in params.items() if k not in _SENTINEL_ONLY})
    data_kwargs = parse_url(f"{'rediss' if tls else 'redis'}://h/0" + (f"?{data_query}" if data_query else ""))
    for k in ("host", "port", "db", "connection_class"):
        data_kwargs.pop(k, None)
    return SentinelTarget(sentinels=sentinels, master=master, db=db, tls=tls, username=username, password=password,
                          sentinel_username=params.get("sentinel_username") or None,
                          sentinel_password=params.get("sentinel_password") or None, data_kwargs=data_kwargs)


def redact_url(url: str | None) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host`` for logs and messages (sentinel URLs too).

    Everything between ``://`` and the *last* ``@`` is credentials: a password with an unencoded ``/``, ``?`` or
    ``#`` (base64 has ``/``) makes URL parsers split it into path, query or fragment, and it must not show there.

    >>> redact_url("redis+sentinel://:pw@a:26379,b:26379/m/0?sentinel_password=s")
    'redis+sentinel://:***@a:26379,b:26379/m/0?sentinel_password=***'
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
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket, say
        raise ConfigError(f"{what} {redact_url(url)} is not a valid URL") from None
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
