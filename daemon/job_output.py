"""What the job commands print, written once for both of their paths: Redis (:mod:`daemon.cli`,
:mod:`daemon.admin_cli`) and HTTP (:mod:`daemon.remote_cli`). Only where the data comes from differs.

>>> # return submitted(args, handle, follow=lambda: watch_job(store, handle.id, sys.stdout), poll_s=0.2)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import Any

from daemon import render
from daemon.cli_context import print_json
from jobs.contract.states import JobState
from jobs.errors import JobTimeoutError, SpecError

WORKER_COLUMNS = [("id", "WORKER"), ("host", "HOST"), ("device", "DEVICE"), ("job", "JOB"), ("cpu_percent", "CPU%"),
                  ("rss_mb", "RSS MiB"), ("gpu", "GPU MiB"), ("beat", "HEARTBEAT"), ("jobs_done", "DONE")]


def refused(path: str, e: SpecError) -> int:
    """A refused spec: every problem on its own line (stderr); exit code 2."""
    print(f"error: {path}: job spec refused ({len(e.problems)} problem(s)); nothing was submitted:", file=sys.stderr)
    for p in e.problems:
        print(f"  - {render.clean(p)}", file=sys.stderr)
    return 2


def submitted(args: argparse.Namespace, handle: Any, follow: Callable[[], dict[str, Any]], poll_s: float) -> int:
    """After a submit: the id (``--json``: id and state); with ``--wait``, the job followed to its end (``follow``
    draws it; ``--json`` polls every ``poll_s``) and exit 0 only if it succeeded."""
    if not args.wait:
        if args.json:
            print_json({"id": handle.id, "state": handle.state.value})
        else:
            print(handle.id)
        return 0
    try:
        if args.json:
            final = handle.wait(timeout=args.timeout, poll_s=poll_s)
        else:
            print(f"submitted {handle.id}", file=sys.stderr)
            final = follow()
    except JobTimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json(final)
    else:
        print(render.final_summary(final))
    return 0 if final["state"] == JobState.SUCCEEDED.value else 1


def cancelled(job_id: str, prev: JobState) -> int:
    """What a cancel did, from the state the job was in."""
    if prev in (JobState.QUEUED, JobState.REQUEUED):
        print(f"cancelled {job_id} (was {prev.value})")
    elif prev is JobState.RUNNING:
        print(f"cancel requested for {job_id}: its worker stops at the next batch boundary and keeps its checkpoints")
    else:
        print(f"{job_id} is already cancelled")
    return 0


def retried(job_id: str, attempt: int) -> int:
    print(f"retrying {job_id} as attempt {attempt}: it resumes from its last checkpoint")
    return 0


def workers(args: argparse.Namespace, ws: list[dict[str, Any]], drained: Iterable[str]) -> int:
    """The worker table (``--json``: the list), then the drained machines' lines."""
    if args.json:
        print_json(ws)
        return 0
    if not ws:
        print("no workers registered")
    else:
        rows = [{**w, "job": w.get("job") or ("drained" if w.get("drained") else "idle"),
                 "gpu": "-" if w.get("gpu_mem_mb") is None else w["gpu_mem_mb"],
                 "beat": f"{w['heartbeat_age_s']:.1f}s ago"} for w in ws]
        print(render.table(rows, WORKER_COLUMNS))
    for line in drained:  # lemon machines: `traind undrain HOST/DEVICE` puts one back
        print(line)
    return 0
