"""The ``traind`` job commands over HTTP: with ``TRAIND_API_URL`` (and ``TRAIND_API_TOKEN``) set, ``submit`` (also
``--wait``), ``status``, ``list``, ``watch``, ``logs``, ``cancel``, ``retry`` and ``workers`` talk to ``traind
serve`` (:class:`jobs.remote.client.RemoteClient`) instead of Redis, printing what the Redis-backed commands print
(the same :mod:`daemon.render` functions). ``--redis-url`` on the command line still means Redis.

:func:`route` is the one place :mod:`daemon.cli` asks; the process commands (worker, supervise, up, serve, purge,
health) are the server side's and never go remote.

>>> # TRAIND_API_URL=https://traind.example TRAIND_API_TOKEN=... traind watch 019ac3f1
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daemon import job_output, render
from daemon.cli_context import print_json
from jobs.contract.states import JobState
from jobs.errors import SpecError

if TYPE_CHECKING:
    from jobs.remote.client import RemoteClient
    from jobs.remote.jobs_api import JobsApi


# An interactive command reports an unreachable API in ~2 s (a library call rides out ~8 s: RETRY_DELAYS_S).
CLI_RETRY_DELAYS_S = (0.3, 0.6, 1.2)


def _maybe_configured() -> bool:
    """Whether an API may be configured (cheap: read-only commands must start fast): ``TRAIND_API_URL``, a context
    named by ``TRAIND_CONTEXT``, or a config file (then :func:`jobs.remote.target.resolve_target` decides)."""
    from jobs import config_file

    if config_file.option_context or os.environ.get("TRAIND_API_URL") or os.environ.get("TRAIND_CONTEXT"):
        return True
    if os.environ.get("TRAIND_REDIS_URL"):
        return False  # the environment outranks the file's current context
    return config_file.config_path().is_file()


def route(args: argparse.Namespace) -> Callable[[argparse.Namespace], int] | None:
    """The remote implementation of ``args.command`` when the resolver picks an API (``--redis-url``/``--storage``
    on the command line pick Redis), else None (the Redis-backed command runs)."""
    fn = COMMANDS.get(getattr(args, "command", ""))
    if fn is None or getattr(args, "redis_url", None) or getattr(args, "storage", None) or not _maybe_configured():
        return None
    from jobs.remote.target import resolve_target

    return fn if resolve_target() is not None else None


def _client() -> RemoteClient:
    """For submit: the whole client (it validates specs, which imports pydantic and the spec models)."""
    from jobs.remote.client import RemoteClient

    return RemoteClient(timeout_s=30.0, retry_delays_s=CLI_RETRY_DELAYS_S)


def _api() -> JobsApi:
    """For the other commands: the job routes only (httpx; no numpy, rq or pydantic: reads start fast)."""
    from jobs.remote.jobs_api import open_api

    return open_api(timeout_s=30.0, retry_delays_s=CLI_RETRY_DELAYS_S)


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client()
    try:  # --owner: only an admin token may name another owner than its own name (403 otherwise)
        handle = client.submit(args.spec, client_key=args.key, owner=getattr(args, "owner", None))
    except SpecError as e:
        return job_output.refused(args.spec, e)

    def follow() -> dict[str, Any]:
        from daemon.remote_watch import watch_remote

        return watch_remote(client.api, handle.id, sys.stdout, timeout_s=args.timeout)

    return job_output.submitted(args, handle, follow, poll_s=0.5)


def cmd_status(args: argparse.Namespace) -> int:
    api = _api()
    job_id = api.resolve(args.job)
    if args.spec:
        print_json(api.job_spec(job_id))
    elif args.json:
        print_json(api.job_status(job_id, True))
    else:
        print(render.status_block(api.job_status(job_id, True)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    page = _api().list_rows(args.state, args.limit)
    jobs = page["jobs"]
    if args.json:
        print_json([{k: v for k, v in j.items() if k not in ("handle", "monitor")} for j in jobs])
    elif not jobs:
        print("no jobs" + (f" in state {args.state}" if args.state else ""))
    else:
        rows = [{**render.summary_row(j, page["now_ms"]), "id": j["handle"]} for j in jobs]
        print(render.table(rows, render.LIST_COLUMNS))
        print(render.LIST_LEGEND, file=sys.stderr)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from daemon.remote_watch import watch_remote

    api = _api()
    final = watch_remote(api, api.resolve(args.job), sys.stdout)
    print(render.final_summary(final))
    return 0 if final["state"] == JobState.SUCCEEDED.value else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from daemon.remote_watch import print_remote_logs

    api = _api()
    print_remote_logs(api, api.resolve(args.job), sys.stdout, follow=args.follow)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    api = _api()
    job_id = api.resolve(args.job)
    return job_output.cancelled(job_id, api.job_cancel(job_id))  # JobFinishedError (exit 1): it succeeded or failed


def cmd_retry(args: argparse.Namespace) -> int:
    from jobs.errors import IllegalTransitionError

    api = _api()
    job_id = api.resolve(args.job)
    try:
        attempt = api.job_retry(job_id)
    except IllegalTransitionError as e:
        print(f"error: {render.clean(e)}", file=sys.stderr)
        return 1
    return job_output.retried(job_id, attempt)


def cmd_workers(args: argparse.Namespace) -> int:
    from daemon.lemon_cli import format_drained

    api = _api()
    ws = api.workers()
    drained = [] if args.json else format_drained([(str(d["machine"]), d) for d in api.drained()])
    return job_output.workers(args, ws, drained)  # the drained lines as the Redis command prints them


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": cmd_submit, "status": cmd_status, "list": cmd_list, "watch": cmd_watch, "logs": cmd_logs,
    "cancel": cmd_cancel, "retry": cmd_retry, "workers": cmd_workers,
}
