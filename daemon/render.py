"""Text formatting for the CLI: tables, progress bars, status blocks, event lines. Pure functions, no I/O.

>>> bar(0.5, width=10)
'#####.....'
>>> fmt_num(0.123456)
'0.1235'
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any


def fmt_num(v: Any) -> str:
    """A metric value with 4 significant digits; '-' for missing."""
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f) or math.isinf(f):
        return str(f)
    if f != 0 and (abs(f) >= 1e5 or abs(f) < 1e-3):
        return f"{f:.3e}"
    return f"{f:.4g}"


def fmt_ts(ms: Any) -> str:
    """Redis-clock milliseconds as local time ``YYYY-mm-dd HH:MM:SS.mmm``; '-' for missing."""
    try:
        ms_i = int(ms)
    except (TypeError, ValueError):
        return "-"
    if ms_i <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms_i / 1000)) + f".{ms_i % 1000:03d}"


def fmt_duration(seconds: float) -> str:
    """``75`` -> ``'1m15s'``."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def bar(fraction: float, width: int = 20) -> str:
    """A fixed-width ASCII progress bar."""
    frac = min(max(fraction, 0.0), 1.0)
    done = int(round(frac * width))
    return "#" * done + "." * (width - done)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Left-aligned text table; ``columns`` are (key, header) pairs.

    >>> print(table([{"id": "a1", "state": "queued"}], [("id", "ID"), ("state", "STATE")]))
    ID  STATE
    a1  queued
    """
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def monitor_of(status: Mapping[str, Any]) -> str:
    """The checkpoint monitor of a job (what ``best_value`` measures)."""
    spec = status.get("spec")
    if isinstance(spec, Mapping):
        ck = spec.get("checkpoint")
        if isinstance(ck, Mapping) and ck.get("monitor"):
            return str(ck["monitor"])
    return "val_loss"


def _live_metrics(status: Mapping[str, Any], last_epoch: Mapping[str, Any] | None) -> dict[str, Any]:
    # The last finished epoch has the validation metrics; the job's live `metrics` (mid-epoch) are fresher for loss.
    out: dict[str, Any] = dict(last_epoch or {})
    live = status.get("metrics")
    if isinstance(live, Mapping):
        out.update({k: v for k, v in live.items() if v is not None})
    return out


def progress_line(status: Mapping[str, Any], last_epoch: Mapping[str, Any] | None = None, width: int = 20) -> str:
    """One line of ``traind watch``: epoch, bar, losses, best value, state.

    ``last_epoch`` is the history entry of the last finished epoch. The bar shows the current epoch's batches when
    the worker reports ``batch``/``steps``, otherwise the epochs done.

    >>> progress_line({"epoch": 2, "epochs": 10, "state": "running", "best_value": 0.5, "best_epoch": 2},
    ...               {"loss": 0.61, "val_loss": 0.5}, width=10)
    'epoch 3/10 [##........] loss=0.61 val_loss=0.5 best val_loss=0.5 @ epoch 2  running'
    """
    state = str(status.get("state", "?"))
    done = int(status.get("epoch") or 0)
    total = int(status.get("epochs") or 0)
    batch, steps = status.get("batch"), status.get("steps")
    running = state == "running"
    shown = min(done + 1, total) if running and total else done
    if running and isinstance(steps, int) and steps > 0 and isinstance(batch, int):
        frac, extra = batch / steps, f" {batch}/{steps}"
    else:
        frac, extra = (done / total if total else 0.0), ""
    parts = [f"epoch {shown}/{total or '?'} [{bar(frac, width)}]{extra}"]
    metrics = _live_metrics(status, last_epoch)
    monitor = monitor_of(status)
    for key in ("loss", "val_loss"):
        if key in metrics:
            parts.append(f"{key}={fmt_num(metrics[key])}")
    if monitor not in ("loss", "val_loss") and monitor in metrics:
        parts.append(f"{monitor}={fmt_num(metrics[monitor])}")
    if status.get("best_value") is not None:
        parts.append(f"best {monitor}={fmt_num(status['best_value'])} @ epoch {status.get('best_epoch')}")
    line = " ".join(parts) + f"  {state}"
    if int(status.get("restarts") or 0):
        line += f" (restarts {status['restarts']})"
    return line


def status_block(status: Mapping[str, Any]) -> str:
    """The human form of ``traind status``."""
    monitor = monitor_of(status)
    rows: list[tuple[str, str]] = [
        ("job", str(status.get("id", "?"))),
        ("name", str(status.get("name", "-"))),
        ("state", str(status.get("state", "?")) + (" (cancel requested)" if status.get("cancel_requested") else "")),
        ("epoch", f"{status.get('epoch', 0)}/{status.get('epochs', '?')}"
         + (" (stopped early)" if status.get("stopped_early") else "")),
        ("restarts", f"{status.get('restarts', 0)}/{status.get('max_restarts', '?')}"
         f" (attempt {status.get('attempt', 1)})"),
    ]
    if status.get("best_value") is not None:
        rows.append(("best", f"{monitor}={fmt_num(status['best_value'])} @ epoch {status.get('best_epoch')}"))
    history = status.get("history") or []
    if history:
        last = history[-1]
        rows.append(("last epoch", " ".join(f"{k}={fmt_num(v)}" for k, v in last.items() if k != "epoch")))
    rows.append(("worker", str(status.get("worker") or "-")))
    rows.append(("queue", str(status.get("queue") or "-")))
    for key in ("reason", "error"):
        if status.get(key):
            rows.append((key, str(status[key])))
    rows.append(("created", fmt_ts(status.get("created_at"))))
    rows.append(("updated", fmt_ts(status.get("updated_at"))))
    if status.get("finished_at"):
        rows.append(("finished", fmt_ts(status.get("finished_at"))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def summary_row(job: Mapping[str, Any], now_ms: int | None = None) -> dict[str, Any]:
    """A ``traind list`` row."""
    updated = job.get("updated_at")
    age = fmt_duration((now_ms - int(updated)) / 1000) + " ago" if now_ms and isinstance(updated, int) else "-"
    best = "-"
    if job.get("best_value") is not None:
        best = f"{fmt_num(job['best_value'])}@{job.get('best_epoch')}"
    return {
        "id": job.get("id"),
        "name": job.get("name"),
        "state": job.get("state"),
        "epoch": f"{job.get('epoch', 0)}/{job.get('epochs', '?')}" + ("*" if job.get("stopped_early") else ""),
        "restarts": job.get("restarts", 0),
        "best": best,
        "worker": job.get("worker") or "-",
        "updated": age,
    }


LIST_COLUMNS: list[tuple[str, str]] = [
    ("id", "ID"), ("name", "NAME"), ("state", "STATE"), ("epoch", "EPOCH"), ("restarts", "RESTARTS"),
    ("best", "BEST"), ("worker", "WORKER"), ("updated", "UPDATED"),
]


def event_line(ev: Mapping[str, Any]) -> str:
    """``2024-05-01 12:00:00.123 WARNING worker w1 lost ...``"""
    return f"{fmt_ts(ev.get('ts'))} {str(ev.get('level', 'info')).upper():<7} {ev.get('msg', '')}"


def final_summary(status: Mapping[str, Any]) -> str:
    """One line on how a job ended, e.g. ``job 1a2b succeeded: 23/200 epochs (stopped early), best val_loss=...``."""
    line = f"job {status.get('id')} {status.get('state')}: {status.get('epoch', 0)}/{status.get('epochs', '?')} epochs"
    if status.get("stopped_early"):
        line += " (stopped early)"
    if status.get("best_value") is not None:
        line += f", best {monitor_of(status)}={fmt_num(status['best_value'])} @ epoch {status.get('best_epoch')}"
    if int(status.get("restarts") or 0):
        line += f", {status['restarts']} restart(s)"
    if status.get("error"):
        line += f"; error: {status['error']}"
    return line
