"""``traind context list|use|add|show|remove``: the named contexts of ``~/.config/traind/config.toml``
(:mod:`jobs.config_file`), as ``kubectl config`` and ``docker context`` keep theirs.

``add`` never takes a token on the command line (it would stay in the shell's history): ``--token-file F`` refers
to a file (mode 0600), ``--token-stdin`` reads one line and stores it in the config file, which is always written
with mode 0600.

Exit codes as elsewhere: 0 done; 1 no such context; 2 invalid input (a bad file, name, URL or permission).

>>> # traind context add team --api-url https://traind.example --token-file ~/.config/traind/team.token --use
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from daemon.cli_context import AddFn, command_group
from jobs import config_file
from jobs.config_file import Context, Local, Remote
from jobs.errors import ConfigError


def cmd_list(args: argparse.Namespace) -> int:
    from daemon import render

    cfg = config_file.load()
    if not cfg.contexts:
        print(f"no contexts in {cfg.path} (traind context add NAME --api-url URL --token-file F)")
        return 0
    rows = [{"cur": "*" if name == cfg.current else "", "name": name, "kind": "remote" if c.remote else "local",
             "target": c.describe()} for name, c in sorted(cfg.contexts.items())]
    print(render.table(rows, [("cur", "CURRENT"), ("name", "NAME"), ("kind", "KIND"), ("target", "TARGET")]))
    return 0


def cmd_use(args: argparse.Namespace) -> int:
    cfg = config_file.load()
    if args.name not in cfg.contexts:
        known = ", ".join(sorted(cfg.contexts)) or "none"
        print(f"error: {cfg.path}: no context named {args.name!r} (known: {known})", file=sys.stderr)
        return 1
    config_file.save(dataclasses.replace(cfg, current=args.name))
    print(f"current context: {args.name}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    cfg = config_file.load()
    name = config_file.check_name(args.name)
    if name in cfg.contexts and not args.force:
        raise ConfigError(f"{cfg.path}: a context named {name!r} exists already (--force replaces it)")
    if args.api_url is not None and args.ctx_storage is not None:
        raise ConfigError("--storage goes with a local context (--redis-url or --storage alone), not --api-url")
    if args.api_url is None and args.ctx_redis_url is None and args.ctx_storage is None:
        raise ConfigError("traind context add NAME needs --api-url URL (a server) or --redis-url/--storage (local)")
    if args.api_url is not None:
        url = config_file.check_api_url(args.api_url, "--api-url")
        token = None
        if args.token_stdin:
            token = config_file.token_text(sys.stdin.readline(config_file.MAX_TOKEN_BYTES + 1), "--token-stdin")
        elif args.token_file is not None:
            config_file.read_token_file(args.token_file, "--token-file")  # refuse a bad file now, not at first use
        ca = None
        if args.ca_bundle is not None:
            from pathlib import Path

            from jobs.remote.target import ApiTarget

            ca = str(Path(args.ca_bundle).expanduser().resolve())
            ApiTarget(url, "-", ca).verify()  # refuse an unreadable bundle now, not at first use
        ctx = Context(name, api_url=url, token=token, token_file=args.token_file, ca_bundle=ca)
    else:
        if args.token_file or args.token_stdin or args.ca_bundle:
            raise ConfigError("--token-file/--token-stdin/--ca-bundle go with --api-url (a local context talks to "
                              "Redis)")
        ctx = Context(name, redis_url=args.ctx_redis_url, storage=args.ctx_storage)
    config_file.save(config_file.with_context(cfg, ctx, make_current=args.use))
    now = config_file.load(cfg.path)
    print(f"added context {name} ({ctx.describe()}) to {cfg.path}" + ("; it is current" if now.current == name
                                                                        else f"; `traind context use {name}`"))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    cfg = config_file.load()
    if args.name not in cfg.contexts:
        print(f"error: {cfg.path}: no context named {args.name!r}", file=sys.stderr)
        return 1
    rest = {k: v for k, v in cfg.contexts.items() if k != args.name}
    config_file.save(dataclasses.replace(cfg, contexts=rest, current=None if cfg.current == args.name
                                         else cfg.current))
    print(f"removed context {args.name}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """What a command would talk to now, and why (the token is never printed, only where it comes from)."""
    target = config_file.resolve(context=args.name)
    if isinstance(target, Remote):
        print(f"api_url: {target.api_url}")
        print(f"token:   {'set' if target.token else 'none (requests will be refused: 401)'}")
        print(f"CA:      {target.ca_bundle or 'the system default (certificates are always verified)'}")
    else:
        assert isinstance(target, Local)
        from jobs.redis.urls import redact_url

        default_redis = "the default (a stack `traind up` runs here, else redis://127.0.0.1:6379/0)"
        print(f"redis:   {redact_url(target.redis_url) if target.redis_url else default_redis}")
        print(f"storage: {target.storage or 'the default (~/.local/share/traind)'}")
    print(f"from:    {target.source}")
    print("(order: --redis-url/--storage options > --context > TRAIND_CONTEXT > TRAIND_API_URL > TRAIND_REDIS_URL/"
          "TRAIND_STORAGE_DIR > the file's current > defaults)")
    return 0


def select(name: str | None) -> None:
    """``traind --context NAME``: the context every resolution of this command uses (None: back to the usual
    order). Checked at once: a name no context has is a ConfigError naming the known ones."""
    config_file.option_context = None
    if name is not None:
        config_file.check_name(name)
        cfg = config_file.load()
        if name not in cfg.contexts:
            known = ", ".join(sorted(cfg.contexts)) or "none"
            raise ConfigError(f"--context {name}: {cfg.path} has no such context (known: {known})")
        config_file.option_context = name


def register(add: AddFn) -> None:
    """Add ``traind context ...`` through the CLI's ``add(name, func, help)``."""
    sp, one = command_group(add, "context", "named contexts (a server URL and token, or a local stack) in "
                            "~/.config/traind/config.toml", default=cmd_show)
    sp.set_defaults(name=None)  # `traind context` alone shows what commands use now and why

    one("list", cmd_list, "list contexts (* marks the current one)")
    p = one("use", cmd_use, "make a context the current one")
    p.add_argument("name")
    p = one("add", cmd_add, "add a context: --api-url with --token-file/--token-stdin, or --redis-url/--storage")
    p.add_argument("name", help="1-64 of A-Z a-z 0-9 _ . -")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--api-url", help="a traind serve, https://host[:port]")
    g.add_argument("--redis-url", dest="ctx_redis_url", help="a local context: Redis URL")
    p.add_argument("--storage", dest="ctx_storage", help="a local context: checkpoint storage (absolute path or s3://...)")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--token-file", help="file holding the token (mode 0600; read at each use)")
    t.add_argument("--token-stdin", action="store_true", help="read the token from stdin and keep it in the config "
                   "file (mode 0600)")
    p.add_argument("--ca-bundle", help="PEM file of the CA(s) that signed the server's certificate (a private CA; "
                   "default: the system's)")
    p.add_argument("--use", action="store_true", help="make it the current context")
    p.add_argument("--force", action="store_true", help="replace a context of this name")
    p = one("show", cmd_show, "what commands talk to now (arguments > env > context), never the token")
    p.add_argument("name", nargs="?", help="show this context instead of the current choice")
    p = one("remove", cmd_remove, "remove a context")
    p.add_argument("name")
