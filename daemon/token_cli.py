"""``traind token add|list|revoke``: the named API tokens of ``traind serve`` (stored hashed in Redis).

Run where the server's Redis is reachable (an operator's shell, the serve host): the tokens live in Redis
(:mod:`jobs.ops.tokens`), and every running ``traind serve`` sees an added or revoked token within a second, without
a restart. ``add`` prints the token on stdout and nowhere else, once: ``TOKEN=$(traind token add ci --role submit)``.
Pointed at an API instead (``TRAIND_API_URL``, a remote context, ``--context``) with an admin token, the same
commands go through ``/api/v1/tokens`` (:mod:`daemon.serve.tokens_api`); ``--redis-url`` still means Redis.

Exit codes as elsewhere: 0 done; 1 not found; 2 invalid input (a taken, reserved or malformed name).

>>> # traind token add alice --role submit   ->  traind_Xq3...   (give it to alice; it is not shown again)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from daemon.cli_context import AddFn, command_group

if TYPE_CHECKING:
    from jobs.ops.tokens import TokenStore
    from jobs.remote.transport import Transport

ROLES = ("read", "submit", "admin")


def _store(args: argparse.Namespace) -> TokenStore:
    from daemon.cli_context import settings_from_args
    from jobs.ops.tokens import TokenStore
    from jobs.redis.conn import connect
    from jobs.settings import ClientSettings

    settings = settings_from_args(ClientSettings, args)
    return TokenStore(connect(settings.effective_redis_url(), retries=2, socket_timeout_s=30.0, settings=settings))


def _api(args: argparse.Namespace) -> Transport | None:
    """The API's transport when the CLI is pointed at one (as the job commands decide: daemon/remote_cli.py) and
    ``--redis-url`` is not given; None: Redis."""
    from daemon.remote_cli import CLI_RETRY_DELAYS_S, _maybe_configured

    if getattr(args, "redis_url", None) or not _maybe_configured():
        return None
    from jobs.remote.target import resolve_target
    from jobs.remote.transport import Transport

    target = resolve_target()
    return None if target is None else Transport(target, timeout_s=30.0, retry_delays_s=CLI_RETRY_DELAYS_S)


def _path(name: str) -> str:
    from urllib.parse import quote

    return f"/api/v1/tokens/{quote(name[:64], safe='')}"


def _now_ms(store: TokenStore) -> int:
    sec, usec = store.r.time()  # Redis' clock, as every other record's timestamps
    return int(sec) * 1000 + int(usec) // 1000


def cmd_add(args: argparse.Namespace) -> int:
    if (api := _api(args)) is not None:
        from jobs.errors import ConfigError

        # not retried: a POST whose answer was lost may have created the token, whose only copy was in the answer
        token = str(api.json("POST", "/api/v1/tokens", body={"name": args.name, "role": args.role},
                             idempotent=False, conflict=ConfigError)["token"])
    else:
        from jobs.ops.tokens import Role

        store = _store(args)
        token = store.add(args.name, Role(args.role), _now_ms(store))
    print(token)
    print(f"token {args.name!r} (role {args.role}) created: it is shown only this once; serve accepts it within a "
          "second", file=sys.stderr)
    return 0


def _ago(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f" ({max(0, now_ms - ms) // 1000}s ago)"


def cmd_list(args: argparse.Namespace) -> int:
    from daemon import render

    if (api := _api(args)) is not None:
        records = [r for r in api.json("GET", "/api/v1/tokens") if isinstance(r, dict)]
        now = int(time.time() * 1000)
    else:
        store = _store(args)
        records = [r.to_dict() for r in store.records()]
        now = _now_ms(store)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no stored tokens (env tokens: TRAIND_API_TOKEN is 'admin', TRAIND_API_READ_TOKENS are 'read')")
        return 0
    rows = [{"name": render.clean(r.get("name")), "role": render.clean(r.get("role")),
             "created": _ago(r.get("created_ms"), now), "used": _ago(r.get("last_used_ms"), now)} for r in records]
    print(render.table(rows, [("name", "NAME"), ("role", "ROLE"), ("created", "CREATED (UTC)"),
                              ("used", "LAST USED (UTC)")]))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    if (api := _api(args)) is not None:
        from jobs.errors import JobNotFoundError

        try:
            api.json("DELETE", _path(args.name), idempotent=True)
            found = True
        except JobNotFoundError:  # the API's 404: no stored token of that name
            found = False
    else:
        found = _store(args).revoke(args.name)
    if not found:
        print(f"error: no stored token named {args.name!r} (traind token list shows them; the env tokens are "
              "changed in serve's environment)", file=sys.stderr)
        return 1
    print(f"revoked {args.name!r}: every traind serve refuses it within a second")
    return 0


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default=argparse.SUPPRESS, help="the server's Redis (env TRAIND_REDIS_URL)")


def register(add: AddFn) -> None:
    """Add ``traind token ...`` through the CLI's ``add(name, func, help)``."""
    _, one = command_group(add, "token", "API tokens of traind serve: add (prints it once), list, revoke",
                           options=_options)

    p = one("add", cmd_add, "create a named token and print it (only this once)")
    p.add_argument("name", help="the token's name: the owner recorded on the jobs it submits (A-Z a-z 0-9 . _ @ -)")
    p.add_argument("--role", choices=ROLES, required=True,
                   help="read: GET only; submit: submit, and cancel/retry its own jobs; admin: everything")
    p = one("list", cmd_list, "list stored tokens: name, role, created, last used (never the token)")
    p.add_argument("--json", action="store_true")
    p = one("revoke", cmd_revoke, "delete a stored token (serve refuses it within a second, no restart)")
    p.add_argument("name")
