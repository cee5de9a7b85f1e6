"""Polling loops behind ``traind watch`` and ``traind logs --follow`` (also used by ``traind up --example``).

>>> # final = watch_job(store, job_id, sys.stdout)   # prints progress until the job ends
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TextIO

import redis

from daemon.render import event_line, progress_line, progress_parts
from jobs.contract.states import JobState
from jobs.errors import JobTimeoutError
from jobs.ops.waiting import no_worker_note
from jobs.redis import packed
from jobs.redis.store import JobStore

REDIS_OUTAGE_S = 30.0  # how long watch_job rides out an unreachable Redis


def last_epoch_metrics(store: JobStore, job_id: str, epoch: int) -> dict[str, Any] | None:
    """The history entry of ``epoch`` (one HGET, not the whole history)."""
    if epoch <= 0:
        return None
    raw = packed.history_entry(store.r, job_id, epoch)
    if raw is None:
        return None
    try:
        val = json.loads(raw)
    except ValueError:
        return None
    return val if isinstance(val, dict) else None


def _live_view(status: dict[str, Any], last_epoch: dict[str, Any] | None, width: int) -> Any:
    """The progress line as a rich renderable exactly one line of ``width`` columns: the bar takes what the text
    leaves (10-30 columns) and the text ends in an ellipsis rather than wrapping (a wrapped line scrolls the
    terminal on every redraw)."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    label, frac, tail = progress_parts(status, last_epoch)
    # The state (and restarts) end the tail after two spaces; it is what a glance looks for, so the metrics are cut
    # before it is.
    cut = tail.rfind("  ")
    metrics, state = (tail[:cut], tail[cut + 2:]) if cut >= 0 else (tail, "")
    bar_w = max(10, min(30, width - len(label) - len(tail) - 2))
    room = max(width - len(label) - bar_w - len(state) - 3, 1)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, width=len(label))
    grid.add_column(no_wrap=True, width=bar_w)
    grid.add_column(no_wrap=True, overflow="ellipsis", max_width=room)
    grid.add_column(no_wrap=True, width=len(state))
    grid.add_row(Text(label), ProgressBar(total=1.0, completed=frac, width=bar_w),
                 Text(metrics, no_wrap=True, overflow="ellipsis"), Text(state))
    return grid


def watch_job(
    store: JobStore,
    job_id: str,
    out: TextIO,
    interval_s: float = 0.5,
    timeout_s: float | None = None,
    check: Callable[[], None] | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Show the progress line until the job is terminal; return its final status (with history).

    On a terminal the line is redrawn in place with rich (fitted to the terminal's width, so it never wraps);
    otherwise a plain line is printed whenever it changes. ``console`` (a ``rich.console.Console``) overrides
    the terminal detection (tests pass one of width 80). ``check`` runs every poll and may raise to abort
    (``traind up`` checks its child processes there). Raises JobTimeoutError after ``timeout_s``.
    """
    live = None
    if console is None and out.isatty():
        from rich.console import Console

        console = Console(file=out)
    if console is not None and console.is_terminal:
        from rich.live import Live

        live = Live(console=console, auto_refresh=False, transient=False, redirect_stdout=False,
                    redirect_stderr=False)
        live.start()
    try:
        return _poll(store, job_id, out, live, interval_s, timeout_s, check)
    finally:
        if live is not None:
            live.stop()


def _poll(store: JobStore, job_id: str, out: TextIO, live: Any, interval_s: float, timeout_s: float | None,
          check: Callable[[], None] | None) -> dict[str, Any]:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_line = ""
    said: str | None = None  # the no-worker note already shown, said once per wait
    outage_since: float | None = None
    while True:
        try:
            st = store.get(job_id, with_history=False, with_goodput=False)  # polled; the split is not drawn
            last = last_epoch_metrics(store, job_id, int(st.get("epoch") or 0))
            outage_since = None
        except (redis.ConnectionError, redis.TimeoutError):
            # A Redis restart (the stack's, or a failover) should not end a long watch; a lasting outage does.
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > REDIS_OUTAGE_S:
                raise
            time.sleep(interval_s)
            continue
        note = no_worker_note(store.r, st, store.now_ms())
        if note is not None and said is None:
            if live is not None:
                live.console.print(f"note: {note}", overflow="fold")
            else:
                out.write(f"note: {note}\n")
            said = note
        elif st.get("state") not in ("queued", "requeued"):
            said = None
        line = progress_line(st, last)
        if line != last_line:
            if live is not None:
                live.update(_live_view(st, last, live.console.width), refresh=True)
            else:
                out.write(line + "\n")
                out.flush()
            last_line = line
        if JobState(st["state"]).is_terminal:
            return store.get(job_id, with_history=True)
        if deadline is not None and time.monotonic() > deadline:
            raise JobTimeoutError(f"job {job_id} still {st['state']} after {timeout_s} s (epoch {st.get('epoch')})")
        if check is not None:
            check()
        time.sleep(interval_s)


class EventTail:
    """Returns each event of a job once, even though the events list is trimmed at its front (``events_max``)."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self._next = 0  # index of the first unseen event while the list has never been trimmed
        self._last_raw: bytes | None = None

    def poll(self) -> list[dict[str, Any]]:
        raws: list[bytes] = packed.events_raw(self.store.r, self.job_id)  # a compacted job's too
        if len(raws) < self.store.events_max:
            new = raws[self._next:]
        else:
            # Trimmed: find where we stopped by content (events carry a ms timestamp, so repeats are rare).
            pos = None
            if self._last_raw is not None:
                for i in range(len(raws) - 1, -1, -1):
                    if raws[i] == self._last_raw:
                        pos = i
                        break
            new = raws[pos + 1:] if pos is not None else raws
        self._next = len(raws)
        if new:
            self._last_raw = new[-1]
        out = []
        for raw in new:
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"msg": raw.decode(errors="replace"), "level": "?"})
        return out


def print_logs(store: JobStore, job_id: str, out: TextIO, follow: bool = False, interval_s: float = 0.5) -> JobState:
    """Print a job's events; with ``follow``, keep printing new ones until the job is terminal."""
    tail = EventTail(store, job_id)
    while True:
        state = JobState(store.raw(job_id)["state"])  # read first: events written before a terminal state show
        for ev in tail.poll():
            out.write(event_line(ev) + "\n")
        out.flush()
        if not follow or state.is_terminal:
            return state
        time.sleep(interval_s)
