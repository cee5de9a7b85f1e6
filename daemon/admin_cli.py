"""Operator commands: ``traind serve``, ``workers``, ``health``, ``retry`` and ``purge``.

Registered on the main parser by :func:`register`; they share :mod:`jobs.ops.admin` with the HTTP API.

Exit codes as elsewhere: 0 success/healthy; 1 unhealthy, not found, or refused; 2 invalid input.

>>> # traind health --worker local   (container healthcheck: exit 0 when this host's worker heartbeat is fresh)
"""

from __future__ import annotations

import argparse
import re
import sys

from daemon.cli_context import AddFn, client_from_args, resolve_job, settings_from_args
from jobs.errors import ConfigError, IllegalTransitionError
from jobs.redis.conn import connect

# jobs.ops.admin (rq), jobs.settings (pydantic) and the server are imported by the commands that use them: this
# module is
# imported by every `traind` invocation to register its subcommands, and read-only commands must start fast.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(v: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", v)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 30d, 12h, 90m or 45s, received {v!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def cmd_serve(args: argparse.Namespace) -> int:
    from daemon.serve.app import run
    from jobs.settings import ServeSettings

    settings = settings_from_args(ServeSettings, args, host=args.host, port=args.port,
                                  ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return run(settings)


def cmd_workers(args: argparse.Namespace) -> int:
    from daemon import job_output
    from daemon.lemon_cli import drained_lines
    from jobs.ops import admin
    client = client_from_args(args)
    ws = admin.workers(client.store)
    return job_output.workers(args, ws, [] if args.json else drained_lines(client.store.r))


def cmd_health(args: argparse.Namespace) -> int:
    from jobs.ops import admin
    from jobs.settings import ClientSettings

    settings = settings_from_args(ClientSettings, args)
    conn = connect(settings.effective_redis_url(), retries=1, socket_timeout_s=5.0)
    max_age = args.max_age_s or 3 * settings.lease_ttl_s
    ok, why = admin.health(conn, worker=args.worker, supervisor=args.supervisor, max_age_s=max_age)
    print(("healthy: " if ok else "unhealthy: ") + why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_retry(args: argparse.Namespace) -> int:
    from jobs.ops import admin
    client = client_from_args(args)
    job_id = resolve_job(client.store, args.job)  # an id or a unique prefix, as every job command takes
    try:
        attempt = admin.retry(client.store, job_id)
    except IllegalTransitionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from daemon import job_output

    return job_output.retried(job_id, attempt)


def cmd_purge(args: argparse.Namespace) -> int:
    from jobs.ops import admin
    from jobs.storage.factory import open_storage

    client = client_from_args(args)
    states = [s.strip() for s in args.state.split(",")] if args.state else None
    try:
        gone = admin.purge(client.store, open_storage(client.settings.storage_dir), args.older_than, states,
                           dry_run=args.dry_run)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(gone)} finished job(s)" + (": " + " ".join(gone[:50]) if gone else ""))
    return 0


def register(add: AddFn) -> None:
    """Add the ops subcommands through the CLI's ``add(name, func, help)``."""
    sp = add("serve", cmd_serve, "HTTP API, live dashboard and /metrics (needs TRAIND_API_TOKEN)")
    sp.add_argument("--host", help="bind address (env TRAIND_HOST; default 127.0.0.1)")
    sp.add_argument("--port", type=int, help="port (env TRAIND_PORT; default 8600)")
    sp.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (env TRAIND_SSL_CERTFILE)")
    sp.add_argument("--ssl-keyfile", help="its PEM private key (env TRAIND_SSL_KEYFILE)")
    sp = add("workers", cmd_workers, "list registered workers")
    sp.add_argument("--json", action="store_true")
    sp = add("health", cmd_health, "exit 0 when healthy: Redis reachable (+ a worker heartbeat / supervisor pass)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--worker", metavar="ID", help="this worker's heartbeat is fresh ('local': any worker on this host)")
    g.add_argument("--supervisor", action="store_true", help="a supervisor finished a pass recently")
    sp.add_argument("--max-age-s", type=float, help="freshness limit (default 3 x lease TTL)")
    sp = add("retry", cmd_retry, "run a failed or cancelled job again from its checkpoint (new attempt)")
    sp.add_argument("job")
    sp = add("purge", cmd_purge, "remove finished jobs' records and files older than a duration")
    sp.add_argument("--older-than", type=parse_duration, required=True, help="e.g. 30d, 12h")
    sp.add_argument("--state", help="comma-separated subset of succeeded,failed,cancelled (default all three)")
    sp.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    from daemon import lemon_cli

    lemon_cli.register(add)
