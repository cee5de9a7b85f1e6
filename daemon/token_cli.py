"""``traind token add|list|revoke``: the named API tokens of ``traind serve`` (stored hashed in Redis).

Run where the server's Redis is reachable (an operator's shell, the serve host): the tokens live in Redis
(:mod:`jobs.ops.tokens`), and every running ``traind serve`` sees an added or revoked token within a second, without
a restart. ``add`` prints the token on stdout and nowhere else, once: ``TOKEN=$(traind token add ci --role submit)``.

Exit codes as elsewhere: 0 done; 1 not found; 2 invalid input (a taken, reserved or malformed name).

>>> # traind token add alice --role submit   ->  traind_Xq3...   (give it to alice; it is not shown again)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.ops.tokens import TokenStore

AddFn = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]
ROLES = ("read", "submit", "admin")


def _store(args: argparse.Namespace) -> TokenStore:
    from daemon.cli_context import settings_from_args
    from jobs.ops.tokens import TokenStore
    from jobs.redis.conn import connect
    from jobs.settings import ClientSettings

    settings = settings_from_args(ClientSettings, args)
    return TokenStore(connect(settings.effective_redis_url(), retries=2, socket_timeout_s=30.0, settings=settings))


def _now_ms(store: TokenStore) -> int:
    sec, usec = store.r.time()  # Redis' clock, as every other record's timestamps
    return int(sec) * 1000 + int(usec) // 1000


def cmd_add(args: argparse.Namespace) -> int:
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

    store = _store(args)
    records = store.records()
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    if not records:
        print("no stored tokens (env tokens: TRAIND_API_TOKEN is 'admin', TRAIND_API_READ_TOKENS are 'read')")
        return 0
    now = _now_ms(store)
    rows = [{"name": r.name, "role": r.role.value, "created": _ago(r.created_ms, now),
             "used": _ago(r.last_used_ms, now)} for r in records]
    print(render.table(rows, [("name", "NAME"), ("role", "ROLE"), ("created", "CREATED (UTC)"),
                              ("used", "LAST USED (UTC)")]))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    if not store.revoke(args.name):
        print(f"error: no stored token named {args.name!r} (traind token list shows them; the env tokens are "
              "changed in serve's environment)", file=sys.stderr)
        return 1
    print(f"revoked {args.name!r}: every traind serve refuses it within a second")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    return int(args.token_func(args))


def register(add: AddFn) -> None:
    """Add ``traind token ...`` through the CLI's ``add(name, func, help)``."""
    sp = add("token", cmd_token, "API tokens of traind serve: add (prints it once), list, revoke")
    sub = sp.add_subparsers(dest="token_command", required=True, metavar="TOKEN_COMMAND")

    def one(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(token_func=func)
        p.add_argument("--redis-url", default=argparse.SUPPRESS, help="the server's Redis (env TRAIND_REDIS_URL)")
        return p

    p = one("add", cmd_add, "create a named token and print it (only this once)")
    p.add_argument("name", help="the token's name: the owner recorded on the jobs it submits (A-Z a-z 0-9 . _ @ -)")
    p.add_argument("--role", choices=ROLES, required=True,
                   help="read: GET only; submit: submit, and cancel/retry its own jobs; admin: everything")
    p = one("list", cmd_list, "list stored tokens: name, role, created, last used (never the token)")
    p.add_argument("--json", action="store_true")
    p = one("revoke", cmd_revoke, "delete a stored token (serve refuses it within a second, no restart)")
    p.add_argument("name")
