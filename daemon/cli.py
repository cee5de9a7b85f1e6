"""The ``traind`` command line (also ``python -m daemon.cli``).

Options override environment variables (``TRAIND_REDIS_URL``, ``TRAIND_STORAGE_DIR``, ...) through the settings
classes of :mod:`jobs.settings`. Only ``traind worker`` (and ``up``'s worker processes) import TensorFlow.

Exit codes: 0 success; 1 the job did not succeed, was not found, timed out, or Redis is unreachable;
2 invalid input (spec, option, missing tool).

>>> # main(["submit", "examples/regression.yaml", "--wait"])
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis

from daemon import admin_cli, context_cli, remote_cli, render, sweep_cli, token_cli
from daemon.cli_context import (
    client_from_args,
    given_url,
    print_json,
    resolve_job,
    settings_from_args,
    store_from_args,
)
from jobs import logfmt
from jobs.contract.states import JobState
from jobs.errors import (
    AmbiguousJobIdError,
    ConfigError,
    InvalidJobIdError,
    JobNotFoundError,
    SpecError,
    TraindError,
)
from jobs.redis.conn import connect
from jobs.redis.urls import redact_url

# Only what every command needs is imported above. Read-only commands (status, list, logs, watch, cancel) must answer
# at once: they never import the client (rq, numpy), pydantic, TensorFlow or rich (tests/test_cli.py checks).
if TYPE_CHECKING:
    from daemon.stack import Stack


# -- job commands ----------------------------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    from daemon import job_output
    from daemon.submitcheck import check_builder_spec

    client = client_from_args(args)
    try:
        # a builder's monitors, checked as client.fit checks a model's (daemon/submitcheck.py)
        if not args.no_check and (note := check_builder_spec(client, args.spec)):
            print(f"note: {render.clean(note)}", file=sys.stderr)
        handle = client.submit(args.spec, client_key=args.key, owner=args.owner)
    except SpecError as e:
        return job_output.refused(args.spec, e)

    def follow() -> dict[str, Any]:
        from daemon.watch import watch_job

        return watch_job(client.store, handle.id, sys.stdout, timeout_s=args.timeout)

    return job_output.submitted(args, handle, follow, poll_s=0.2)


def cmd_status(args: argparse.Namespace) -> int:
    from jobs.ops.lookup import placement_note, summary
    from jobs.ops.waiting import no_worker_note, waiting_reason

    store = store_from_args(args)
    st = store.get(resolve_job(store, args.job), with_history=not args.spec)
    if not args.spec and (note := placement_note(store.r, st) or no_worker_note(store.r, st, store.now_ms())):
        st["note"] = note
    if not args.spec and (why := waiting_reason(store.r, st, store.now_ms())) is not None:
        st["waiting"] = why.to_dict()  # issue 24: the reason and the position
    if args.spec:
        print_json(st.get("spec") or {})
    elif args.json:
        print_json(summary(st))
    else:
        print(render.status_block(summary(st)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    if args.owner:  # the owner's index (jobs/ops/admin.py), bounded like the API's filters
        from jobs.ops.admin import list_page

        jobs = list_page(store, state=args.state, owner=args.owner, limit=args.limit or 1000)["items"]
    else:
        jobs = store.list(args.state, args.limit)
    if args.json:
        print_json(jobs)
    elif not jobs:
        print("no jobs" + (f" in state {args.state}" if args.state else "")
              + (f" of {args.owner}" if args.owner else ""))
    else:
        now = store.now_ms()
        from daemon.handles import with_handles, with_monitors  # short unique id prefixes; BEST's metric

        rows = [render.summary_row(j, now) for j in with_monitors(store.r, jobs)]
        print(render.table(with_handles(store.r, rows), render.LIST_COLUMNS))
        print(render.LIST_LEGEND, file=sys.stderr)  # for the reader; a pipe (| grep, | wc -l) gets the table only
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from daemon.watch import watch_job

    store = store_from_args(args)
    final = watch_job(store, resolve_job(store, args.job), sys.stdout, interval_s=args.interval_s)
    print(render.final_summary(final))
    return 0 if final["state"] == JobState.SUCCEEDED.value else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from daemon.watch import print_logs

    store = store_from_args(args)
    print_logs(store, resolve_job(store, args.job), sys.stdout, follow=args.follow)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from daemon import job_output
    from jobs.ops.lookup import cancel

    store = store_from_args(args)
    job_id = resolve_job(store, args.job)
    return job_output.cancelled(job_id, cancel(store, job_id))  # JobFinishedError (exit 1): it succeeded or failed


# -- processes -------------------------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from jobs.settings import WorkerSettings

    settings = settings_from_args(WorkerSettings, args, queues=args.queues, device=args.device,
                                  worker_id=args.worker_id, burst=True if args.burst else None)
    try:
        from worker.runner import Worker  # TensorFlow is imported here and only here
    except ImportError as e:
        raise ConfigError(f"cannot start a worker: {e} (install the worker: pip install -e '.[tf]')") from e
    return int(Worker(settings).run())


def cmd_supervise(args: argparse.Namespace) -> int:
    from daemon.supervisor import Supervisor
    from jobs.settings import SupervisorSettings

    settings = settings_from_args(SupervisorSettings, args, interval_s=args.interval_s,
                                  burst=True if args.burst else None)
    return Supervisor(settings).run()


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM behave like Ctrl-C (so `finally` blocks stop children); returns the restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def _check_external_redis(url: str, given_by: str) -> None:
    """``traind up`` with a Redis URL uses that server instead of starting one: check it answers before anything
    starts, so a stale ``export TRAIND_REDIS_URL`` fails in a second with one line instead of a stack of children
    logging connection errors."""
    try:
        connect(url, retries=0, socket_timeout_s=5.0).ping()
    except ValueError:
        raise ConfigError(f"{given_by}: invalid Redis URL {redact_url(url)}") from None
    except redis.RedisError as e:
        hint = ("unset TRAIND_REDIS_URL (perhaps left from an earlier `traind up`) to start an embedded Redis, "
                if given_by == "TRAIND_REDIS_URL" else "drop --redis-url to start an embedded Redis, ")
        problem = ("the Redis there refused the credentials" if isinstance(e, redis.AuthenticationError)
                   else "no Redis answers there")
        raise ConfigError(f"{given_by} is {redact_url(url)} but {problem} ({type(e).__name__}: {render.clean(e)}); "
                          f"{hint}or start that server") from None


def cmd_up(args: argparse.Namespace) -> int:
    from daemon.stack import EXAMPLE_MODULES, Stack
    from jobs.settings import StackSettings

    settings = settings_from_args(StackSettings, args, workers=args.workers, redis_port=args.redis_port)
    if args.example:  # the example's own module, for this command only (the default allowlist is empty)
        settings.allowed_modules = [*settings.allowed_modules, *EXAMPLE_MODULES]
    if args.example and settings.workers < 1:
        raise ConfigError("--example needs at least one worker (--workers 1)")
    if settings.redis_url is not None:
        _check_external_redis(settings.redis_url, "--redis-url" if getattr(args, "redis_url", None)
                              else "TRAIND_REDIS_URL")
    restore = _sigterm_as_interrupt()
    try:
        with Stack(settings, out=sys.stdout, grace_s=args.grace_s) as stack:
            if args.example:
                return _run_example(stack, args.timeout)
            print("Ctrl-C stops everything.", flush=True)
            stack.wait()
    except KeyboardInterrupt:
        return 130 if args.example else 0
    finally:
        restore()
    return 0


def _run_example(stack: Stack, timeout_s: float) -> int:
    from importlib.resources import as_file, files

    from daemon.watch import watch_job
    from jobs.client import Client
    from jobs.settings import ClientSettings

    settings = ClientSettings(redis_url=stack.url, storage_dir=stack.storage,
                              allowed_modules=stack.settings.allowed_modules)
    client = Client(settings=settings, connection=connect(stack.url, retries=5))
    with as_file(files("examples") / "regression.yaml") as spec_path:
        handle = client.submit(spec_path)
    print(f"submitted example job {handle.id} ({spec_path.name}); training ...", flush=True)
    final = watch_job(client.store, handle.id, sys.stdout, timeout_s=timeout_s, check=stack.check)
    print(render.final_summary(final))
    print(f"checkpoints: {client.storage.url}/jobs/{handle.id}")
    return 0 if final["state"] == JobState.SUCCEEDED.value else 1


# -- parser ----------------------------------------------------------------------------------------------------------
def _positive_float(v: str) -> float:
    f = float(v)
    if f <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, received {v}")
    return f


def _positive_int(v: str) -> int:
    i = int(v)
    if i < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {v}")
    return i


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the options may stand before or after the subcommand without one default clobbering the other.
    common.add_argument("--redis-url", default=argparse.SUPPRESS,
                        help="Redis URL (env TRAIND_REDIS_URL; default: the stack `traind up` runs on this "
                             "machine, else redis://127.0.0.1:6379/0; `traind up` without one starts its own Redis)")
    common.add_argument("--storage", default=argparse.SUPPRESS,
                        help="checkpoint storage: an absolute path or s3://bucket/prefix (env TRAIND_STORAGE_DIR; "
                             "default ~/.local/share/traind)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("--context", dest="use_context", default=argparse.SUPPRESS, metavar="NAME",
                        help="use this context of ~/.config/traind/config.toml for this command (over TRAIND_CONTEXT)")
    p = argparse.ArgumentParser(prog="traind", description="Fault-tolerant Keras training daemon.", parents=[common])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    sp = add("worker", cmd_worker, "run a training worker")
    sp.add_argument("--queues", help="comma-separated logical queues (default: default)")
    sp.add_argument("--device", help="cpu or gpu:N (default cpu)")
    sp.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    sp.add_argument("--worker-id", help="worker id (default: host-pid)")
    sp = add("supervise", cmd_supervise, "run the supervisor (requeues jobs of lost workers)")
    sp.add_argument("--interval-s", type=_positive_float, help="seconds between passes (default 0.5)")
    sp.add_argument("--burst", action="store_true", help="exit once nothing is running or pending")
    sp = add("submit", cmd_submit, "validate and submit a YAML/JSON job spec")
    sp.add_argument("spec", help="spec file (YAML or JSON)")
    sp.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if it succeeded")
    sp.add_argument("--timeout", type=_positive_float, help="with --wait: give up after this many seconds")
    sp.add_argument("--key", help="idempotency key: resubmitting with the same key returns the first job")
    sp.add_argument("--owner", help="owner recorded on the job (fair share, limits, filters; default: TRAIND_OWNER, "
                    "else the OS user)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--no-check", action="store_true", help="do not build a builder spec's model here to check its "
                    "monitors (TensorFlow's import costs seconds); the worker checks them when the job starts")
    sp = add("status", cmd_status, "show one job (its id or a unique prefix of it)")
    sp.add_argument("job", help="job id, or a prefix matching exactly one job")
    sp.add_argument("--json", action="store_true", help="the summary and history as JSON")
    sp.add_argument("--spec", action="store_true", help="print the job's spec (JSON) instead")
    sp = add("list", cmd_list, "list jobs, newest first")
    sp.add_argument("--state", choices=[s.value for s in JobState])
    sp.add_argument("--owner", help="only this owner's jobs")
    sp.add_argument("--limit", type=_positive_int, default=None)
    sp.add_argument("--json", action="store_true")
    sp = add("watch", cmd_watch, "live progress until the job ends (exit 0 if it succeeded)")
    sp.add_argument("job", help="job id or unique prefix")
    sp.add_argument("--interval-s", type=_positive_float, default=0.5)
    sp = add("logs", cmd_logs, "print a job's events")
    sp.add_argument("job", help="job id or unique prefix")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    sp = add("cancel", cmd_cancel, "cancel a job (a running one stops at its next batch boundary)")
    sp.add_argument("job", help="job id or unique prefix")
    sp = add("up", cmd_up, "run a local stack: embedded Redis (unless --redis-url), supervisor, workers")
    sp.add_argument("--workers", type=int, help="worker processes (default 1)")
    sp.add_argument("--redis-port", type=int, help="port of the embedded Redis (default: a free one)")
    sp.add_argument("--example", action="store_true", help="train examples/regression.yaml, print it, stop")
    sp.add_argument("--timeout", type=_positive_float, default=1800.0, help="--example: give up after S seconds")
    sp.add_argument("--grace-s", type=_positive_float, default=20.0, help="SIGTERM-to-SIGKILL grace on stop")
    admin_cli.register(add)  # serve/workers/health/retry/purge live in their own module
    sweep_cli.register(add)  # traind sweep ...: daemon/sweep_cli.py
    token_cli.register(add)  # traind token add|list|revoke: daemon/token_cli.py
    context_cli.register(add)  # traind context list|use|add|show|remove: daemon/context_cli.py
    return p


def _error(e: object) -> None:
    # Messages may quote names, spec fields or Redis data: no terminal escapes get through.
    print(f"error: {render.clean(e, newlines=True)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``traind``; returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    # Long-running processes log what they do; a command (submit, list, ...) prints its answer and only warnings.
    quiet = args.command not in ("worker", "supervise", "up", "serve")
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else
                        logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logfmt.apply_from_env()  # TRAIND_LOG_FORMAT=json: one JSON object per line
    try:
        context_cli.select(getattr(args, "use_context", None))  # --context NAME: for this command only
        rc = int((remote_cli.route(args) or args.func)(args))  # TRAIND_API_URL: over HTTP (daemon/remote_cli.py)
        sys.stdout.flush()  # here, not at exit: a reader that left (`| head`) is a BrokenPipeError caught below
        return rc
    except BrokenPipeError:
        # The reader has what it wanted; stop quietly as `cat` does, with no traceback at interpreter exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer cut off by its pipe
    except (SpecError, ConfigError, AmbiguousJobIdError, InvalidJobIdError) as e:
        _error(e)
        return 2
    except JobNotFoundError as e:
        _error(e)
        return 1
    except redis.exceptions.NoPermissionError as e:  # an ACL user without the rights (a read-only one submitting)
        print(f"error: Redis refused this user the command: {e}; check the ACL of TRAIND_REDIS_URL's user "
              "(docs/security.md)", file=sys.stderr)
        return 1
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as e:
        url = given_url(args)
        _error(f"cannot reach Redis at {redact_url(url)}: {e}")
        return 1
    except TraindError as e:
        _error(e)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        context_cli.select(None)


if __name__ == "__main__":
    sys.exit(main())
