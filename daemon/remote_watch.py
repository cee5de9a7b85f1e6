"""``traind watch`` / ``submit --wait`` / ``logs -f`` over HTTP: the job's Server-Sent Events stream
(``GET /api/v1/jobs/{id}/stream``, :mod:`daemon.serve.sse`) drawn exactly as the Redis-polling
:func:`daemon.watch.watch_job` draws it (the same progress line, the same rich live view on a terminal).

>>> # final = watch_remote(open_api(), job_id, sys.stdout)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from daemon.render import event_line, progress_line
from daemon.watch import _live_view, live_display
from jobs.contract.states import JobState
from jobs.errors import ApiAuthError, ApiError, JobTimeoutError

if TYPE_CHECKING:
    from jobs.remote.jobs_api import JobsApi

OUTAGE_S = 30.0  # how long a broken stream is reconnected before the watch gives up (as watch_job rides out Redis)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any, str | None]]:
    """``(event, data, id)`` of an SSE line stream (comments and ``retry:`` skipped; bad JSON: data None).

    >>> list(sse_events(iter(["retry: 2000", "", "id: 5", "event: status", 'data: {"a":1}', "", ": keepalive", ""])))
    [('status', {'a': 1}, '5'), ('keepalive', None, None)]
    """
    event, data, eid = "message", [], None
    for line in lines:
        if line == "":
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = None
                yield event, payload, eid
            event, data, eid = "message", [], None
        elif line.startswith(":"):
            yield "keepalive", None, None  # lets the caller check its deadline on an idle stream
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line.startswith("id:"):
            eid = line[3:].strip()


class _View:
    """The job as the stream has told it so far: its status and its history entries by epoch."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.history: dict[int, dict[str, Any]] = {}

    def apply(self, event: str, data: Any) -> bool:
        """Take one stream event in; True when the status changed."""
        if event == "snapshot" and isinstance(data, dict):
            for h in data.get("history") or []:
                if isinstance(h, dict) and isinstance(h.get("epoch"), int):
                    self.history[h["epoch"]] = h
            self.status = data
            return True
        if event == "status" and isinstance(data, dict):
            self.status = data
            return True
        if event == "epoch" and isinstance(data, list):
            for h in data:
                if isinstance(h, dict) and isinstance(h.get("epoch"), int):
                    self.history[h["epoch"]] = h
            return True
        return False

    def last_epoch(self) -> dict[str, Any] | None:
        try:
            return self.history.get(int(self.status.get("epoch") or 0))
        except (TypeError, ValueError):
            return None


def watch_remote(api: JobsApi, job_id: str, out: TextIO, timeout_s: float | None = None,
                 console: Any = None) -> dict[str, Any]:
    """Draw the job's progress from its SSE stream until it is terminal; return its final status (with history).
    A broken stream is reconnected (a snapshot again) for up to :data:`OUTAGE_S`. Raises JobTimeoutError."""
    with live_display(out, console) as live:
        return _follow(api, job_id, out, live, timeout_s)


def _follow(api: JobsApi, job_id: str, out: TextIO, live: Any, timeout_s: float | None) -> dict[str, Any]:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    view, last_line, said = _View(), "", None
    outage_since: float | None = None
    while True:
        try:
            for event, data, _ in sse_events(api.transport.stream_lines(f"/api/v1/jobs/{job_id}/stream")):
                outage_since = None
                if event == "deleted":
                    raise ApiError(f"job {job_id} was deleted (purged) while watched")
                if view.apply(event, data):
                    st = view.status
                    note = st.get("note")
                    if note and note != said:
                        (live.console.print(f"note: {note}", overflow="fold") if live is not None
                         else out.write(f"note: {note}\n"))
                        said = note
                    line = progress_line(st, view.last_epoch())
                    if line != last_line:
                        if live is not None:
                            live.update(_live_view(st, view.last_epoch(), live.console.width), refresh=True)
                        else:
                            out.write(line + "\n")
                            out.flush()
                        last_line = line
                    if st.get("state") and JobState(st["state"]).is_terminal:
                        return api.job_status(job_id, True)
                if deadline is not None and time.monotonic() > deadline:
                    state = view.status.get("state")
                    raise JobTimeoutError(f"job {job_id} still {state} after {timeout_s} s "
                                          f"(epoch {view.status.get('epoch')})")
        except ApiAuthError:
            raise
        except ApiError:
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > OUTAGE_S:
                raise
            time.sleep(1.0)


def print_remote_logs(api: JobsApi, job_id: str, out: TextIO, follow: bool = False,
                      interval_s: float = 0.5) -> JobState:
    """Print a job's events; with ``follow``, keep printing new ones until the job is terminal. Events are compared
    by content when the server's list was trimmed at its front (``events_max``), as :class:`daemon.watch.EventTail`
    does."""
    seen: list[Any] = []
    while True:
        state = api.job_state(job_id)  # first: events written before a terminal state show
        events = api.job_events(job_id)
        start = 0  # the last one printed not found (trimmed past it): all of them, never a gap
        if seen:
            for i in range(len(events) - 1, -1, -1):
                if events[i] == seen[-1]:
                    start = i + 1
                    break
        for ev in events[start:]:
            out.write(event_line(ev) + "\n")
        if events[start:]:
            seen = [events[-1]]
        out.flush()
        if not follow or state.is_terminal:
            return state
        time.sleep(interval_s)
