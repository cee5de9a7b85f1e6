"""Text formatting for the CLI: tables, progress bars, status blocks, event lines. Pure functions, no I/O.

Everything shown here that came from users or Redis (job names, monitor and metric names, events, errors) passes
through :func:`clean`, so a job name cannot clear the screen or retitle the terminal.

>>> bar(0.5, width=10)
'#####.....'
>>> fmt_num(0.123456)
'0.1235'
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from jobs.contract.records import to_int

# Bidirectional overrides/isolates reorder how the rest of a line reads ("Trojan Source"); shown escaped too.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def clean(value: Any, newlines: bool = False) -> str:
    """``str(value)`` made safe for a terminal: control characters (ESC of ANSI/OSC sequences, BEL, ``\\r``,
    C1 controls, line/paragraph separators, bidi overrides) are shown as visible ``\\xNN`` escapes instead of
    acting; a tab becomes a space. ``newlines=True`` keeps line breaks (multi-line error messages); otherwise
    they are escaped too.

    >>> clean("a\\tb\\r\\x1b[2J")
    'a b\\\\r\\\\x1b[2J'
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to do
        return text
    out = []
    for ch in text:
        if ch == "\t":
            out.append(" ")
        elif ch == "\n" and newlines:
            out.append(ch)
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\n":
            out.append("\\n")
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):  # Zl/Zp: some terminals break lines
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def fmt_num(v: Any) -> str:
    """A metric value with 4 significant digits; '-' for missing."""
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return clean(v)
    if math.isnan(f) or math.isinf(f):
        return str(f)
    if f != 0 and (abs(f) >= 1e5 or abs(f) < 1e-3):
        return f"{f:.3e}"
    return f"{f:.4g}"


def fmt_ts(ms: Any) -> str:
    """Redis-clock milliseconds as local time ``YYYY-mm-dd HH:MM:SS.mmm``; '-' for missing."""
    ms_i = to_int(ms)
    if ms_i <= 0 or ms_i >= 253_402_300_800_000:  # none, or past year 9999 (strftime's end)
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
    """Left-aligned text table; ``columns`` are (key, header) pairs; cells are :func:`clean`-ed.

    >>> print(table([{"id": "a1", "state": "queued"}], [("id", "ID"), ("state", "STATE")]))
    ID  STATE
    a1  queued
    """
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else clean(r.get(k)) for k, _ in columns]
                                         for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def monitor_of(status: Mapping[str, Any]) -> str:
    """The checkpoint monitor of a job (what ``best_value`` measures): the summary's ``monitor`` or the spec's."""
    if status.get("monitor"):
        return clean(status["monitor"])
    spec = status.get("spec")
    if isinstance(spec, Mapping):
        ck = spec.get("checkpoint")
        if isinstance(ck, Mapping) and ck.get("monitor"):
            return clean(ck["monitor"])
    return "val_loss"


def _live_metrics(status: Mapping[str, Any], last_epoch: Mapping[str, Any] | None) -> dict[str, Any]:
    # The last finished epoch has the validation metrics; the job's live `metrics` (mid-epoch) are fresher for loss.
    out: dict[str, Any] = dict(last_epoch or {})
    live = status.get("metrics")
    if isinstance(live, Mapping):
        out.update({k: v for k, v in live.items() if v is not None})
    return out


class Position(NamedTuple):
    """Where a job is, in Keras' 1-based epoch numbering: ``epoch`` of ``epochs``, ``batch`` of ``steps``
    (``steps`` 0 when unknown). ``epoch`` is the one in progress while batches of it are reported, else the last
    finished one, so the number never goes back at an epoch's end or when the job ends."""

    epoch: int
    epochs: int
    batch: int
    steps: int

    @property
    def fraction(self) -> float:
        """The bar: batches of the shown epoch when known, else finished epochs of all."""
        if self.steps:
            return self.batch / self.steps
        return self.epoch / self.epochs if self.epochs else 0.0

    @property
    def overall(self) -> float:
        """The whole run: finished epochs plus the shown epoch's batches, so it never goes back between epochs."""
        if not self.epochs:
            return self.fraction
        done = self.epoch - 1 + (min(self.batch / self.steps, 1.0) if self.steps else 0.0 if self.batch else 1.0)
        return min(max(done / self.epochs, 0.0), 1.0)


def position(status: Mapping[str, Any]) -> Position:
    """The :class:`Position` of a job record (``epoch`` there counts finished epochs).

    >>> position({"state": "running", "epoch": 9, "epochs": 20, "batch": 608, "steps": 625})
    Position(epoch=10, epochs=20, batch=608, steps=625)
    >>> position({"state": "running", "epoch": 10, "epochs": 20, "batch": 0, "steps": 625})
    Position(epoch=10, epochs=20, batch=625, steps=625)
    >>> position({"state": "succeeded", "epoch": 12, "epochs": 20, "batch": 0, "steps": 625})
    Position(epoch=12, epochs=20, batch=625, steps=625)
    """
    done, total = to_int(status.get("epoch")), to_int(status.get("epochs"))
    batch, steps = to_int(status.get("batch")), to_int(status.get("steps"))
    if status.get("state") == "running" and batch > 0:
        # the worker reports batches of the epoch after the finished ones (it zeroes batch at the end)
        return Position(done + 1, total, min(batch, steps) if steps else batch, steps)
    if done == 0 and status.get("state") in ("queued", "requeued", "running"):
        return Position(1, total, 0, steps)  # waiting or starting: epoch 1, no batch yet (never "epoch 0/N")
    # Between epochs, and once the job ended: the last finished epoch, complete (never a guess at the next one).
    return Position(done, total, steps if done else 0, steps)


def where(pos: Position) -> str:
    """``epoch 10/20 batch 608/625`` (the wording events and ``status`` use)."""
    text = f"epoch {pos.epoch}/{pos.epochs or '?'}"
    return text + (f" batch {pos.batch}/{pos.steps}" if pos.steps else f" batch {pos.batch}" if pos.batch else "")


def progress_parts(status: Mapping[str, Any], last_epoch: Mapping[str, Any] | None = None) -> tuple[str, float, str]:
    """``traind watch``'s line in three parts: label (``epoch 4/10``), bar fraction, and the rest (batches,
    losses, best value, state); the live view draws the bar to fit the terminal."""
    pos = position(status)
    label = f"epoch {pos.epoch}/{pos.epochs or '?'}"
    parts = [f"{pos.batch}/{pos.steps}"] if pos.steps else [f"batch {pos.batch}"] if pos.batch else []
    metrics = _live_metrics(status, last_epoch)
    monitor = monitor_of(status)
    for key in ("loss", "val_loss"):
        if key in metrics:
            parts.append(f"{key}={fmt_num(metrics[key])}")
    if monitor not in ("loss", "val_loss") and monitor in metrics:
        parts.append(f"{monitor}={fmt_num(metrics[monitor])}")
    if status.get("best_value") is not None:
        parts.append(f"best {monitor}={fmt_num(status['best_value'])} @ epoch {clean(status.get('best_epoch'))}")
    tail = " ".join(parts) + f"  {clean(status.get('state', '?'))}"
    if to_int(status.get("restarts")):
        tail += f" (restarts {to_int(status['restarts'])})"
    return label, pos.overall, tail


def progress_line(status: Mapping[str, Any], last_epoch: Mapping[str, Any] | None = None, width: int = 20) -> str:
    """One line of ``traind watch``: epoch, bar, losses, best value, state.

    ``last_epoch`` is the history entry of the last finished epoch. The bar shows the current epoch's batches when
    the worker reports ``batch``/``steps``, otherwise the epochs done.

    >>> progress_line({"epoch": 2, "epochs": 10, "state": "succeeded", "best_value": 0.5, "best_epoch": 2},
    ...               {"loss": 0.61, "val_loss": 0.5}, width=10)
    'epoch 2/10 [##........] loss=0.61 val_loss=0.5 best val_loss=0.5 @ epoch 2  succeeded'
    """
    label, frac, tail = progress_parts(status, last_epoch)
    return f"{label} [{bar(frac, width)}] {tail}"


def status_block(status: Mapping[str, Any]) -> str:
    """The human form of ``traind status``."""
    monitor = monitor_of(status)
    pos = position(status)
    state = clean(status.get("state", "?"))
    rows: list[tuple[str, str]] = [
        ("job", clean(status.get("id", "?"))),
        ("name", clean(status.get("name", "-"))),
        ("state", state + (" (cancel requested)" if status.get("cancel_requested") else "")),
        ("epochs done", f"{to_int(status.get('epoch'))}/{clean(status.get('epochs', '?'))}"
         + (" (stopped early)" if status.get("stopped_early") else "")),
    ]
    if state == "running" and (pos.steps or pos.batch):
        rows.append(("progress", f"{where(pos)} [{bar(pos.fraction, 20)}]"))
    rows.append(("restarts", f"{to_int(status.get('restarts'))}/{clean(status.get('max_restarts', '?'))}"
                 f" (attempt {clean(status.get('attempt', 1))})"))
    if status.get("best_value") is not None:
        rows.append(("best", f"{monitor}={fmt_num(status['best_value'])} @ epoch {clean(status.get('best_epoch'))}"))
    history = status.get("history") or []
    if history:
        last = history[-1]
        rows.append((f"epoch {clean(last.get('epoch', '?'))}",
                     " ".join(f"{clean(k)}={fmt_num(v)}" for k, v in last.items() if k != "epoch")))
    if isinstance(status.get("goodput"), Mapping) and status["goodput"].get("wall_s"):
        rows.append(("goodput", goodput_line(status["goodput"])))
    rows.append(("worker", clean(status.get("worker") or "-")))
    rows.append(("queue", clean(status.get("queue") or "-")))
    if status.get("owner"):
        rows.append(("owner", clean(status["owner"])))
    for key in ("reason", "error", "note"):
        if status.get(key):
            rows.append((key, clean(status[key])))
    why = status.get("waiting")
    if isinstance(why, Mapping) and why.get("message") and why.get("message") != status.get("note"):
        rows.append(("waiting", clean(why["message"])))  # issue 24: why it waits, where it stands
    rows.append(("created", fmt_ts(status.get("created_at"))))
    rows.append(("updated", fmt_ts(status.get("updated_at"))))
    if status.get("finished_at"):
        rows.append(("finished", fmt_ts(status.get("finished_at"))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def goodput_line(g: Mapping[str, Any]) -> str:
    """``97.1% productive (61m of 63m); lost: redone 40s, detection 6s, ...`` (non-zero parts, largest first).

    >>> goodput_line({"wall_s": 100, "productive_s": 90, "ratio": 0.9, "queued_s": 4, "redone_s": 6})
    '90.0% productive (1m30s of 1m40s); lost: redone 6s, queued 4s'
    """
    parts = [(k[:-2], float(v)) for k, v in g.items()
             if k.endswith("_s") and k not in ("wall_s", "productive_s") and isinstance(v, (int, float)) and v >= 0.5]
    lost = ", ".join(f"{k} {fmt_duration(v)}" for k, v in sorted(parts, key=lambda kv: -kv[1]))
    head = (f"{100 * float(g.get('ratio') or 0):.1f}% productive ({fmt_duration(float(g.get('productive_s') or 0))} "
            f"of {fmt_duration(float(g.get('wall_s') or 0))})")
    return head + (f"; lost: {lost}" if lost else "")


def summary_row(job: Mapping[str, Any], now_ms: int | None = None) -> dict[str, Any]:
    """A ``traind list`` row (see :data:`LIST_LEGEND`)."""
    updated = job.get("updated_at")
    age = fmt_duration((now_ms - int(updated)) / 1000) + " ago" if now_ms and isinstance(updated, int) else "-"
    best = "-"
    if job.get("best_value") is not None:  # named: the monitor differs between jobs (val_loss, val_accuracy...)
        best = f"{monitor_of(job)}={fmt_num(job['best_value'])} (epoch {clean(job.get('best_epoch'))})"
    return {
        "id": job.get("id"),
        "name": job.get("name"),
        "owner": job.get("owner") or "-",
        "state": job.get("state"),
        "epoch": f"{to_int(job.get('epoch'))}/{job.get('epochs', '?')}"
                 + (" early" if job.get("stopped_early") else ""),
        "restarts": job.get("restarts", 0),
        "best": best,
        "worker": job.get("worker") or "-",
        "updated": age,
    }


LIST_COLUMNS: list[tuple[str, str]] = [
    ("id", "ID"), ("name", "NAME"), ("owner", "OWNER"), ("state", "STATE"), ("epoch", "EPOCHS DONE"),
    ("best", "BEST (EPOCH)"),
    ("restarts", "RESTARTS"), ("worker", "WORKER"), ("updated", "UPDATED"),
]
LIST_LEGEND = ("EPOCHS DONE: finished/total epochs (early: stopped by early stopping). BEST (EPOCH): the best "
               "value of the checkpoint monitor (named) and the epoch that reached it. "
               "RESTARTS: lost workers survived.")


def event_line(ev: Mapping[str, Any]) -> str:
    """``2024-05-01 12:00:00.123 WARNING worker w1 lost ...``"""
    return f"{fmt_ts(ev.get('ts'))} {clean(ev.get('level', 'info')).upper():<7} {clean(ev.get('msg', ''))}"


def final_summary(status: Mapping[str, Any]) -> str:
    """One line on how a job ended, e.g. ``job 1a2b succeeded: 23/200 epochs (stopped early), best val_loss=...``."""
    line = (f"job {clean(status.get('id'))} {clean(status.get('state'))}: "
            f"{to_int(status.get('epoch'))}/{clean(status.get('epochs', '?'))} epochs")
    if status.get("stopped_early"):
        line += " (stopped early)"
    if status.get("best_value") is not None:
        line += f", best {monitor_of(status)}={fmt_num(status['best_value'])} @ epoch {clean(status.get('best_epoch'))}"
    if to_int(status.get("restarts")):
        line += f", {to_int(status['restarts'])} restart(s)"
    if status.get("error"):
        line += f"; error: {clean(status['error'])}"
    return line
