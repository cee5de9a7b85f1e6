"""``traind undrain`` and the drained-machine lines of ``traind workers`` (lemon machines, :mod:`jobs.redis.lemons`).

>>> # traind undrain gpu-box-3/gpu:0      # its workers take jobs again; its failure count starts over
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.cli_context import AddFn


def drained_lines(r: Any) -> list[str]:
    """One line per drained machine: ``drained  HOST/DEVICE  since ...: reason``."""
    from jobs.redis import lemons

    return format_drained(sorted(lemons.drained(r).items()))


def format_drained(machines: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The lines of :func:`drained_lines` for ``(machine, {"since_ms", "reason"})`` pairs (also what the API's
    ``/api/v1/workers/drained`` gives the remote ``traind workers``)."""
    from daemon.render import clean, fmt_ts

    return [f"drained  {clean(m)}  since {fmt_ts(info.get('since_ms'))}: {clean(info.get('reason') or '')}"
            for m, info in machines]


def cmd_undrain(args: argparse.Namespace) -> int:
    from daemon.cli_context import client_from_args
    from jobs.redis import lemons

    client = client_from_args(args)
    if lemons.undrain(client.store.r, args.machine):
        print(f"{args.machine}: back in service (its workers take jobs again)")
        return 0
    known = ", ".join(sorted(lemons.drained(client.store.r))) or "none"
    print(f"error: {args.machine} is not drained (drained machines: {known})", file=sys.stderr)
    return 1


def register(add: AddFn) -> None:
    sp = add("undrain", cmd_undrain, "put a drained (lemon) machine back: its workers take jobs again")
    sp.add_argument("machine", help="HOST/DEVICE as `traind workers` shows it, e.g. gpu-box-3/gpu:0")
