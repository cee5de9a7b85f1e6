"""What every ``traind`` command builds from its parsed options: settings, a client, a job store, a full job id.

Shared by :mod:`daemon.cli` and :mod:`daemon.admin_cli` (one place for the settings/override handling). Light on
purpose: read-only commands import it and must start fast, so pydantic, the client (rq, numpy) and the store are
imported by the functions that need them.

>>> # store = store_from_args(args); job_id = resolve_job(store, "3f2a")
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from jobs.errors import ConfigError
from jobs.redis.conn import connect
from jobs.redis.urls import DEFAULT_REDIS_URL, redact_url

if TYPE_CHECKING:
    from jobs.client import Client
    from jobs.redis.store import JobStore
    from jobs.settings import CommonSettings

S = TypeVar("S", bound="CommonSettings")


def settings_from_args(cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
    """Settings from the environment, overridden by the options that were given."""
    from pydantic import ValidationError

    kw: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "redis_url", None):
        kw["redis_url"] = args.redis_url
    if getattr(args, "storage", None):
        kw["storage_dir"] = args.storage  # a relative path or an unknown scheme is refused by the settings
    if getattr(cls, "finds_local_stack", True):  # not `traind up`, which starts its own Redis unless told
        ctx_url, ctx_storage = context_local(args)
        if ctx_url:
            kw["redis_url"] = ctx_url
        if ctx_storage:
            kw["storage_dir"] = ctx_storage
    try:
        return cls(**kw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings: {problems}") from e


def client_from_args(args: argparse.Namespace) -> Client:
    from jobs.client import Client
    from jobs.settings import ClientSettings

    settings = settings_from_args(ClientSettings, args)
    # Few retries: an interactive command should report an unreachable Redis in seconds, not minutes.
    conn = connect(settings.effective_redis_url(), retries=2, socket_timeout_s=30.0, settings=settings)
    return Client(settings=settings, connection=conn)


# The variables the read-only commands read (or ignore: the allowlist matters to submit only) without the settings
# classes. Any other TRAIND_ variable sends them through ClientSettings, which validates it (typos, limits) at
# pydantic's import cost: an unknown name is still refused, only a little later.
READ_ENV = frozenset({"TRAIND_REDIS_URL", "TRAIND_STORAGE_DIR", "TRAIND_ALLOWED_MODULES", "TRAIND_CONFIG",
                      "TRAIND_CONTEXT"})


def store_from_args(args: argparse.Namespace) -> JobStore:
    """The job store for read-only commands and cancel, without importing pydantic or the client (fast start)."""
    from jobs.redis.store import JobStore

    settings: CommonSettings | None = None
    if any(k.startswith("TRAIND_") and k not in READ_ENV for k in os.environ):
        from jobs.settings import ClientSettings

        settings = settings_from_args(ClientSettings, args)
        url, limits = settings.effective_redis_url(), {"events_max": settings.events_max,
                                                       "max_history": settings.max_history}
    else:
        url, limits = given_url(args), {}
    try:
        # With settings: their socket timeout and durability policy (cancel writes); without: the defaults.
        conn = connect(url, retries=2, socket_timeout_s=None if settings else 30.0, settings=settings)
    except ValueError as e:  # a malformed URL: never echo it (it may hold a password)
        raise ConfigError(f"invalid Redis URL {redact_url(url)}: {type(e).__name__} (expected "
                          "redis://[user:password@]host:port/db; percent-encode '/', '#', '?' and '@' in a password)"
                          ) from None
    return JobStore(conn, **limits)


def given_url(args: argparse.Namespace) -> str:
    """--redis-url, TRAIND_REDIS_URL, a local context's (~/.config/traind/config.toml), the local stack of this
    machine (jobs/localstack.py), or the default."""
    from jobs.localstack import find

    ctx_url, ctx_storage = context_local(args)
    given = getattr(args, "redis_url", None) or os.environ.get("TRAIND_REDIS_URL") or ctx_url
    stack = None if given else find(getattr(args, "storage", None) or os.environ.get("TRAIND_STORAGE_DIR")
                                    or ctx_storage)
    return given or (stack.url if stack else DEFAULT_REDIS_URL)


def context_local(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The Redis URL and storage of the chosen context (``TRAIND_CONTEXT``, else the config file's ``current``) when
    it is a local one and neither options nor the environment say otherwise (:func:`jobs.config_file.resolve`);
    else ``(None, None)``. A remote context is the remote client's (jobs/remote), not this."""
    from jobs import config_file

    target = config_file.resolve(redis_url=getattr(args, "redis_url", None), storage=getattr(args, "storage", None),
                                 with_token=False)
    if isinstance(target, config_file.Local) and target.source.startswith("context "):
        return target.redis_url, target.storage
    return None, None


def resolve_job(store: JobStore, ref: str) -> str:
    """The full job id for an id or a unique id prefix."""
    from jobs.ops.lookup import resolve_job_id

    return resolve_job_id(store.r, ref)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


Command = Callable[[argparse.Namespace], int]
AddFn = Callable[[str, Command, str], argparse.ArgumentParser]  # the CLI's ``add(name, func, help)``


def command_group(add: AddFn, name: str, help_: str, *, default: Command | None = None,
                  options: Callable[[argparse.ArgumentParser], None] | None = None,
                  ) -> tuple[argparse.ArgumentParser, AddFn]:
    """``traind NAME SUBCOMMAND ...`` through the CLI's ``add``: returns the group's parser and an ``add`` for its
    subcommands. ``default`` runs when no subcommand is given (else one is required); ``options`` adds the same
    options to every subcommand.

    >>> # sp, one = command_group(add, "token", "API tokens"); one("list", cmd_list, "list stored tokens")
    """

    def run(args: argparse.Namespace) -> int:
        return int(getattr(args, "subcommand_func", default)(args))  # type: ignore[misc]

    sp = add(name, run, help_)
    sub = sp.add_subparsers(dest=f"{name}_command", required=default is None, metavar=f"{name.upper()}_COMMAND")

    def one(sub_name: str, func: Command, sub_help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(sub_name, help=sub_help, description=sub_help)
        p.set_defaults(subcommand_func=func)
        if options is not None:
            options(p)
        return p

    return sp, one
