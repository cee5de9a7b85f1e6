"""``traind sweep submit|status|list|cancel|dashboard``: hyperparameter sweeps whose trials are traind jobs.

Registered on the main parser by :func:`register`. A supervisor drives the sweeps (jobs/sweep/hook.py); these
commands only write and read the sweep records. Exit codes as elsewhere: 0 success; 1 not found / Redis
unreachable; 2 invalid input (a refused sweep file lists every problem).

>>> # traind sweep submit examples/sweep.yaml --json    ->  {"id": "s019ac..."}
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from daemon import render
from daemon.cli_context import AddFn, command_group
from jobs.errors import SpecError

if TYPE_CHECKING:
    from jobs.sweep.records import SweepStore



def _sweeps(args: argparse.Namespace) -> SweepStore:
    from daemon.cli_context import store_from_args  # the CLI's settings/URL handling, one place
    from jobs.sweep.records import SweepStore

    return SweepStore(store_from_args(args).r)


def cmd_submit(args: argparse.Namespace) -> int:
    from daemon.cli_context import client_from_args
    from jobs.contract.owners import check_owner
    from jobs.sweep.spec import load_sweep_file

    client = client_from_args(args)
    s = client.settings
    try:
        sweep, job = load_sweep_file(args.file, allowed_modules=s.allowed_modules, max_epochs=s.max_epochs,
                                     max_spec_bytes=s.max_spec_bytes)
        owner = check_owner(args.owner) if args.owner else client.owner
    except SpecError as e:
        print(f"error: {render.clean(args.file)}: sweep spec refused ({len(e.problems)} problem(s)); nothing was "
              "submitted:", file=sys.stderr)
        for p in e.problems:
            print(f"  - {render.clean(p)}", file=sys.stderr)
        return 2
    from jobs.sweep.records import SweepStore

    sweep_id = SweepStore(client.r).create(sweep.model_dump(mode="json"), job.model_dump(mode="json"),
                                           sweep.direction(job), sweep.objective_metric(job), owner=owner)
    if args.json:
        print(json.dumps({"id": sweep_id}))
    else:
        print(sweep_id)
    return 0


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={render.fmt_num(v) if isinstance(v, float) else v}"
                    for k, v in params.items())


def cmd_status(args: argparse.Namespace) -> int:
    from jobs.sweep.records import status

    store = _sweeps(args)
    st = status(store, store.resolve(args.sweep))
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    best = st["best"]
    print(f"sweep {st['id']}  {render.clean(st['name'])}  {st['state']}"
          f"{'  (cancel requested)' if st['cancel_requested'] and st['state'] == 'running' else ''}")
    done = sum(n for s, n in st["counts"].items() if s in ("succeeded", "pruned", "failed", "cancelled"))
    print(f"objective: {st['direction']} {render.clean(st['metric'])}; trials {done}/{st['trials_total']} done, "
          f"{st['parallel']} in parallel; " + ", ".join(f"{n} {s}" for s, n in sorted(st["counts"].items())))
    if best:
        print(f"best: trial {best['number']} (job {best['job']}) {render.fmt_num(best['value'])}  "
              f"{render.clean(_fmt_params(best['params']))}")
    if st["error"]:
        print(f"error: {render.clean(st['error'])}")
    rows = [{**t, "value": render.fmt_num(t["value"]),
             "epochs": f"{t['epochs_done']}/{t['epochs'] or '?'}" + (f" (pruned @{t['pruned_at']})" if t["pruned"]
                                                                    else ""),
             "params": _fmt_params(t["params"])} for t in st["trials"]]
    print(render.table(rows, [("number", "TRIAL"), ("job", "JOB"), ("state", "STATE"), ("value", "VALUE"),
                              ("epochs", "EPOCHS DONE"), ("restarts", "RESTARTS"), ("params", "PARAMS")]))
    for line in st["bad_records"]:
        print(f"warning: {render.clean(line)}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from jobs.sweep.records import summaries

    rows = summaries(_sweeps(args), args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    shown = [{**r, "trials": f"{r.get('trials_done', '?')}/{r.get('trials_total', '?')}",
              "best": render.fmt_num((r.get("best") or {}).get("value"))} for r in rows]
    print(render.table(shown, [("id", "ID"), ("name", "NAME"), ("state", "STATE"), ("trials", "TRIALS DONE"),
                               ("metric", "OBJECTIVE"), ("best", "BEST")]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    store = _sweeps(args)
    sweep_id = store.resolve(args.sweep)
    state = store.request_cancel(sweep_id)
    if state == "running":
        print(f"sweep {sweep_id}: cancel requested; its controller cancels the running trials at its next pass")
        return 0
    print(f"sweep {sweep_id} already {state}; nothing to cancel")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the sweep's study, read from traind's Redis through traind's connection (no snapshot)."""
    import optuna_dashboard

    from jobs.sweep.study import storage

    store = _sweeps(args)
    sweep_id = store.resolve(args.sweep)
    print(f"optuna-dashboard for sweep {sweep_id} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    optuna_dashboard.run_server(storage(store.r, sweep_id), host=args.host, port=args.port)
    return 0


def _options(p: argparse.ArgumentParser) -> None:
    # The main parser's common options, accepted after the sweep command too (SUPPRESS: no clobbering).
    p.add_argument("--redis-url", default=argparse.SUPPRESS, help="Redis URL (env TRAIND_REDIS_URL)")
    p.add_argument("--storage", default=argparse.SUPPRESS, help="storage (env TRAIND_STORAGE_DIR)")


def register(add: AddFn) -> None:
    """Add ``traind sweep ...`` through the CLI's ``add(name, func, help)``."""
    _, one = command_group(add, "sweep", "hyperparameter sweeps (Optuna) whose trials are traind jobs",
                           options=_options)

    p = one("submit", cmd_submit, "validate and submit a sweep file (YAML/JSON); prints its id")
    p.add_argument("file", help="sweep file (docs/sweeps.md)")
    p.add_argument("--owner", help="owner of the sweep and its trials (default: TRAIND_OWNER, else the OS user)")
    p.add_argument("--json", action="store_true", help='print {"id": ...}')
    p = one("status", cmd_status, "show a sweep: its trials, their states and values, the best so far")
    p.add_argument("sweep", help="sweep id or a unique prefix")
    p.add_argument("--json", action="store_true")
    p = one("list", cmd_list, "list sweeps, newest first")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p = one("dashboard", cmd_dashboard, "serve optuna-dashboard on the sweep's Optuna study")
    p.add_argument("sweep", help="sweep id or a unique prefix")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p = one("cancel", cmd_cancel, "cancel a sweep: running trials are cancelled, no new one starts")
    p.add_argument("sweep", help="sweep id or a unique prefix")
