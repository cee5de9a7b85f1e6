"""Named API tokens with roles for ``traind serve``, stored hashed in Redis (``traind token add|list|revoke``).

A token is ``traind_`` + 43 URL-safe characters from :func:`secrets.token_urlsafe` (256 random bits). Redis holds
only ``sha256("traind-api-token:" + token)`` next to the token's name, role and creation time
(:data:`jobs.contract.keys.API_TOKENS`), so a copy of Redis (a dump, a replica, a worker's ACL user) yields no
usable token.

Why one fast, unsalted sha256 rather than scrypt/argon2: those slow a guesser down when the secret is a
*password* (a few dozen bits). These tokens are generated here with 256 random bits, so nobody can enumerate
candidates, slow hash or not, and no precomputed table covers them (the reason to salt). A slow hash would instead
cost every API request tens of milliseconds of CPU on the server (a cheap denial of service with wrong tokens), and a
per-token salt would turn the lookup of a presented token into a scan of every record. Tokens are therefore always
generated, never chosen by a person (``token add`` takes no token).

Roles: ``read`` (GET only), ``submit`` (submit; cancel/retry of its own jobs), ``admin`` (everything). The name
is the owner recorded on the jobs a token submits, so it follows the owner pattern.

>>> valid_name("alice@ml-team")
'alice@ml-team'
>>> len(new_token()), new_token().startswith("traind_")
(50, True)
>>> digest("traind_x") == digest("traind_x") != digest("traind_y")
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from typing import Any

from jobs.contract import keys
from jobs.contract.owners import OWNER_RE
from jobs.errors import ConfigError

log = logging.getLogger("traind.tokens")

TOKEN_PREFIX = "traind_"  # recognisable in a leaked file or log line (secret scanners match prefixes)
NAME_RE = OWNER_RE  # a token's name is the owner of the jobs it submits
MAX_TOKENS = 10_000  # serve caches every record; a bound keeps that cache (and `token list`) small
USED_WRITE_EVERY_MS = 60_000  # last-used is a hint for `token list`, not an audit log: one write a minute at most


class Role(str, Enum):
    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"


# The names of the tokens from the environment (TRAIND_API_TOKEN / TRAIND_API_READ_TOKENS): `token add` refuses them
# so that a name always means one kind of token and `token revoke NAME` never appears to revoke an env token.
ENV_ADMIN_NAME = "admin"
ENV_READ_NAME = "read"
RESERVED_NAMES = frozenset({ENV_ADMIN_NAME, ENV_READ_NAME})


def valid_name(name: str) -> str:
    """``name`` if it is a valid token name (the owner pattern), else ConfigError."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"token name {name[:80]!r}: expected 1-64 of A-Z a-z 0-9 . _ @ - (it becomes the owner "
                          "of the jobs the token submits)")
    return name


def new_token() -> str:
    """A fresh token: the prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What Redis stores for ``token`` (hex sha256 with a domain prefix; see the module docstring for why fast)."""
    return hashlib.sha256(b"traind-api-token:" + token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One stored token: never the token itself."""

    name: str
    role: Role
    sha256: str
    created_ms: int
    last_used_ms: int | None = None

    @classmethod
    def parse(cls, name: Any, raw: Any, used: Any = None) -> TokenRecord | None:
        """The record of a ``keys.API_TOKENS`` field, or None (logged) for a malformed one: one bad row, never a
        crash, and never a token that authenticates by accident.

        >>> TokenRecord.parse(b"ci", b'{"role": "submit", "sha256": "' + b"a" * 64 + b'", "created_ms": 1}').role
        <Role.SUBMIT: 'submit'>
        >>> TokenRecord.parse("ci", "{not json") is None
        True
        """
        try:
            text_name = name.decode() if isinstance(name, bytes) else str(name)
            d = json.loads(raw)
            rec = cls(name=valid_name(text_name), role=Role(d["role"]), sha256=str(d["sha256"]),
                      created_ms=int(d["created_ms"]), last_used_ms=_ms(used))
            if not re.fullmatch(r"[0-9a-f]{64}", rec.sha256):
                raise ValueError("sha256 is not 64 hex digits")
            return rec
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, ConfigError) as e:
            log.warning("skipping a malformed API token record %r: %s", str(name)[:80], type(e).__name__)
            return None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role.value, "created_ms": self.created_ms,
                "last_used_ms": self.last_used_ms}


def _ms(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


class TokenStore:
    """The stored tokens in one Redis (sync; serve reads the same keys through its async connection).

    >>> # store = TokenStore(redis.Redis.from_url(url)); token = store.add("ci", Role.SUBMIT, now_ms=0)
    """

    def __init__(self, r: Any) -> None:
        self.r = r

    def add(self, name: str, role: Role, now_ms: int) -> str:
        """Create token ``name`` with ``role`` and return it (the only time it is ever seen); ConfigError when the
        name is taken, reserved or malformed, or the store is full."""
        valid_name(name)
        if name in RESERVED_NAMES:
            raise ConfigError(f"token name {name!r} is reserved for the tokens of TRAIND_API_TOKEN ('admin') and "
                              "TRAIND_API_READ_TOKENS ('read'); choose another name")
        if self.r.hlen(keys.API_TOKENS) >= MAX_TOKENS:
            raise ConfigError(f"{MAX_TOKENS} tokens are stored already; revoke unused ones first (traind token list)")
        token = new_token()
        record = json.dumps({"role": role.value, "sha256": digest(token), "created_ms": now_ms})
        if not self.r.hsetnx(keys.API_TOKENS, name, record):  # atomic: two concurrent adds cannot both win
            raise ConfigError(f"a token named {name!r} exists already; revoke it first (traind token revoke {name})")
        self.r.pipeline(transaction=False).hdel(keys.API_TOKENS_USED, name).incr(keys.API_TOKENS_VERSION).execute()
        return token

    def revoke(self, name: str) -> bool:
        """Delete token ``name``; False when there was none. Serve refuses it within its cache time (1 s)."""
        pipe = self.r.pipeline(transaction=True)
        removed, _, _ = pipe.hdel(keys.API_TOKENS, name).hdel(keys.API_TOKENS_USED, name).incr(
            keys.API_TOKENS_VERSION).execute()
        return bool(removed)

    def records(self) -> list[TokenRecord]:
        """Every well-formed stored token, sorted by name (malformed rows are logged and left out)."""
        raw = self.r.hgetall(keys.API_TOKENS)
        used = self.r.hgetall(keys.API_TOKENS_USED)
        return sorted(records_of(raw, used), key=lambda t: t.name)


def records_of(raw: dict[Any, Any], used: dict[Any, Any] | None = None) -> list[TokenRecord]:
    """Parse the ``keys.API_TOKENS`` hash (and the last-used hash) into records, skipping malformed rows."""
    used_by = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in (used or {}).items()}
    out = []
    for name, value in raw.items():
        text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        if (rec := TokenRecord.parse(name, value, used_by.get(text))) is not None:
            out.append(rec)
    return out
