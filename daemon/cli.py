"""The ``traind`` command line (also ``python -m daemon.cli``).

Options override environment variables (``TRAIND_REDIS_URL``, ``TRAIND_STORAGE_DIR``, ...) through the settings
classes of :mod:`jobs.settings`. Only ``traind worker`` (and ``up``'s worker processes) import TensorFlow.

Exit codes: 0 success; 1 the job did not succeed, was not found, timed out, or Redis is unreachable;
2 invalid input (spec, option, missing tool).

>>> # main(["submit", "examples/regression.yaml", "--wait"])
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from pydantic import ValidationError

from daemon import render
from daemon.watch import print_logs, watch_job
from jobs import logfmt
from jobs.client import Client
from jobs.errors import ConfigError, JobNotFoundError, JobTimeoutError, SpecError, StorageError, TraindError
from jobs.redis_conn import connect, redact_url
from jobs.settings import ClientSettings, CommonSettings, StackSettings, SupervisorSettings, WorkerSettings
from jobs.states import JobState
from jobs.storage import validate_job_id

if TYPE_CHECKING:
    from daemon.stack import Stack

S = TypeVar("S", bound=CommonSettings)
_FORWARD = {"chaos": 1, "bench": 2}  # subcommands whose remaining args go to bench.* modules untouched


def _settings(cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
    """Settings from the environment, overridden by the options that were given."""
    kw: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "redis_url", None):
        kw["redis_url"] = args.redis_url
    if getattr(args, "storage", None):
        kw["storage_dir"] = Path(args.storage)
    try:
        return cls(**kw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings: {problems}") from e


def _client(args: argparse.Namespace) -> Client:
    settings = _settings(ClientSettings, args)
    # Few retries: an interactive command should report an unreachable Redis in seconds, not minutes.
    conn = connect(settings.effective_redis_url(), retries=2, socket_timeout_s=30.0)
    return Client(settings=settings, connection=conn)


def _job_id(raw: str) -> str:
    try:
        return validate_job_id(raw)
    except StorageError as e:
        raise ConfigError(str(e)) from e


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- job commands ----------------------------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        handle = client.submit(args.spec, client_key=args.key)
    except SpecError as e:
        print(f"error: {args.spec}: job spec refused ({len(e.problems)} problem(s)); nothing was submitted:",
              file=sys.stderr)
        for p in e.problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    if not args.wait:
        if args.json:
            _print_json({"id": handle.id, "state": handle.state.value})
        else:
            print(handle.id)
        return 0
    try:
        if args.json:
            final = handle.wait(timeout=args.timeout)
        else:
            print(f"submitted {handle.id}", file=sys.stderr)
            final = watch_job(client.store, handle.id, sys.stdout, timeout_s=args.timeout)
    except JobTimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(final)
    else:
        print(render.final_summary(final))
    return 0 if final["state"] == JobState.SUCCEEDED.value else 1


def cmd_status(args: argparse.Namespace) -> int:
    st = _client(args).store.get(_job_id(args.job), with_history=True)
    if args.json:
        _print_json(st)
    else:
        print(render.status_block(st))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = _client(args)
    jobs = client.list(args.state, args.limit)
    if args.json:
        _print_json(jobs)
    elif not jobs:
        print("no jobs" + (f" in state {args.state}" if args.state else ""))
    else:
        now = client.store.now_ms()
        print(render.table([render.summary_row(j, now) for j in jobs], render.LIST_COLUMNS))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    client = _client(args)
    final = watch_job(client.store, _job_id(args.job), sys.stdout, interval_s=args.interval_s)
    print(render.final_summary(final))
    return 0 if final["state"] == JobState.SUCCEEDED.value else 1


def cmd_logs(args: argparse.Namespace) -> int:
    print_logs(_client(args).store, _job_id(args.job), sys.stdout, follow=args.follow)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job_id = _job_id(args.job)
    prev = _client(args).store.request_cancel(job_id)
    if prev in (JobState.QUEUED, JobState.REQUEUED):
        print(f"cancelled {job_id} (was {prev.value})")
    elif prev is JobState.RUNNING:
        print(f"cancel requested for {job_id}: its worker stops at the next batch boundary and keeps its checkpoints")
    elif prev is JobState.CANCELLED:
        print(f"{job_id} is already cancelled")
    else:
        print(f"error: {job_id} already {prev.value}; nothing to cancel", file=sys.stderr)
        return 1
    return 0


# -- processes -------------------------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(WorkerSettings, args, queues=args.queues, device=args.device, worker_id=args.worker_id,
                         burst=True if args.burst else None)
    try:
        from worker.runner import Worker  # TensorFlow is imported here and only here
    except ImportError as e:
        raise ConfigError(f"cannot start a worker: {e} (install the worker: pip install -e '.[tf]')") from e
    return int(Worker(settings).run())


def cmd_supervise(args: argparse.Namespace) -> int:
    from daemon.supervisor import Supervisor

    settings = _settings(SupervisorSettings, args, interval_s=args.interval_s, burst=True if args.burst else None)
    return Supervisor(settings).run()


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM behave like Ctrl-C (so `finally` blocks stop children); returns the restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def cmd_up(args: argparse.Namespace) -> int:
    from daemon.stack import EXAMPLE_MODULES, Stack

    settings = _settings(StackSettings, args, workers=args.workers, redis_port=args.redis_port)
    if args.example:  # the example's own module, for this command only (the default allowlist is empty)
        settings.allowed_modules = [*settings.allowed_modules, *EXAMPLE_MODULES]
    if args.example and settings.workers < 1:
        raise ConfigError("--example needs at least one worker (--workers 1)")
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

    settings = ClientSettings(redis_url=stack.url, storage_dir=stack.storage,
                              allowed_modules=stack.settings.allowed_modules)
    client = Client(settings=settings, connection=connect(stack.url, retries=5))
    with as_file(files("examples") / "regression.yaml") as spec_path:
        handle = client.submit(spec_path)
    print(f"submitted example job {handle.id} ({spec_path.name}); training ...", flush=True)
    final = watch_job(client.store, handle.id, sys.stdout, timeout_s=timeout_s, check=stack.check)
    print(render.final_summary(final))
    print(f"checkpoints: {client.storage.root / 'jobs' / handle.id}")
    return 0 if final["state"] == JobState.SUCCEEDED.value else 1


def _forward(command: str, name: str | None, rest: list[str], args: argparse.Namespace) -> int:
    if name is not None and not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ConfigError(f"bench: invalid benchmark name {name!r} (expected a module name like 'throughput')")
    module = "bench.chaos" if command == "chaos" else f"bench.{name}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name in ("bench", module):
            raise ConfigError(f"traind {command}: module {module} is not available (is bench/ installed?)") from e
        raise
    entry = getattr(mod, "main", None)
    if not callable(entry):
        raise ConfigError(f"traind {command}: {module} has no main(argv) function")
    # Common options reach the bench code through the environment it reads its settings from.
    if getattr(args, "redis_url", None):
        os.environ["TRAIND_REDIS_URL"] = args.redis_url
    if getattr(args, "storage", None):
        os.environ["TRAIND_STORAGE_DIR"] = args.storage
    rc = entry(rest)
    return int(rc or 0)


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
                        help="Redis URL (env TRAIND_REDIS_URL; default redis://127.0.0.1:6379/0)")
    common.add_argument("--storage", default=argparse.SUPPRESS,
                        help="shared checkpoint storage dir (env TRAIND_STORAGE_DIR; default ./traind-data)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
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
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = add("status", cmd_status, "show one job")
    sp.add_argument("job")
    sp.add_argument("--json", action="store_true")
    sp = add("list", cmd_list, "list jobs, newest first")
    sp.add_argument("--state", choices=[s.value for s in JobState])
    sp.add_argument("--limit", type=_positive_int, default=None)
    sp.add_argument("--json", action="store_true")
    sp = add("watch", cmd_watch, "live progress until the job ends (exit 0 if it succeeded)")
    sp.add_argument("job")
    sp.add_argument("--interval-s", type=_positive_float, default=0.5)
    sp = add("logs", cmd_logs, "print a job's events")
    sp.add_argument("job")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    sp = add("cancel", cmd_cancel, "cancel a job (a running one stops at its next batch boundary)")
    sp.add_argument("job")
    sp = add("up", cmd_up, "run a local stack: embedded Redis (unless --redis-url), supervisor, workers")
    sp.add_argument("--workers", type=int, help="worker processes (default 1)")
    sp.add_argument("--redis-port", type=int, help="port of the embedded Redis (default: a free one)")
    sp.add_argument("--example", action="store_true", help="train examples/regression.yaml, print it, stop")
    sp.add_argument("--timeout", type=_positive_float, default=1800.0, help="--example: give up after S seconds")
    sp.add_argument("--grace-s", type=_positive_float, default=20.0, help="SIGTERM-to-SIGKILL grace on stop")
    from daemon import ops  # serve/workers/health/retry/purge live in their own module

    ops.register(add)
    sub.add_parser("chaos", help="fault-injection run (bench.chaos); arguments are passed on")
    sp = sub.add_parser("bench", help="run a benchmark (bench.NAME); arguments are passed on")
    sp.add_argument("name")
    return p


def _split_forwarded(argv: list[str]) -> tuple[list[str], list[str]]:
    """``[..., "chaos", *rest]`` -> (head, rest): forwarded args never meet traind's parser."""
    for i, tok in enumerate(argv):
        if tok in _FORWARD and (i == 0 or argv[i - 1] not in ("--redis-url", "--storage")):
            cut = i + _FORWARD[tok]
            return argv[:cut], argv[cut:]
        if not tok.startswith("-") and (i == 0 or argv[i - 1] not in ("--redis-url", "--storage")):
            break  # another subcommand
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``traind``; returns the exit code."""
    head, rest = _split_forwarded(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(head)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logfmt.apply_from_env()  # TRAIND_LOG_FORMAT=json: one JSON object per line
    try:
        if args.command in _FORWARD:
            return _forward(args.command, getattr(args, "name", None), rest, args)
        return int(args.func(args))
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except JobNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except redis.exceptions.NoPermissionError as e:  # an ACL user without the rights (a read-only one submitting)
        print(f"error: Redis refused this user the command: {e}; check the ACL of TRAIND_REDIS_URL's user "
              "(docs/security.md)", file=sys.stderr)
        return 1
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as e:
        url = getattr(args, "redis_url", None) or os.environ.get("TRAIND_REDIS_URL") or "redis://127.0.0.1:6379/0"
        print(f"error: cannot reach Redis at {redact_url(url)}: {e}", file=sys.stderr)
        return 1
    except TraindError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
