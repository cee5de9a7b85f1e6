"""What ``traind list`` adds to the stored job records: each job's short handle (the shortest prefix of its id that
no other job shares) and its checkpoint monitor (which the BEST column names).

Ids begin with the creation time in hex milliseconds (:func:`jobs.client.new_job_id`), so jobs of one afternoon
share their first 5-6 characters. A handle is at least :data:`MIN_LEN` (8) characters: 8 hex digits of the time
span 4.1 s, so once those seconds have passed no later job can take an 8-character handle that was shown (7 would
stay open for 65 s); jobs submitted within the same 4 s get longer handles from the random part. Every command
that takes a job accepts a handle (a unique prefix: :func:`jobs.ops.lookup.resolve_job_id`).

>>> shortest_unique_prefixes(["1a2427a37dd7c4", "1a2427a37f00aa", "1a2427b00000aa"], ["1a2427a37dd7c4"])
{'1a2427a37dd7c4': '1a2427a37d'}
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from jobs.contract import keys

MIN_LEN = 8
WINDOW_S = 600.0  # creation times compared for handles: 4.1 s of id time plus ample clock skew between submitters
MAX_NEAR = 5000  # ids one window may read: beyond (a burst of jobs within minutes) its rows show their full id


def _common(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def shortest_unique_prefixes(all_ids: Iterable[str], shown: Iterable[str], min_len: int = MIN_LEN) -> dict[str, str]:
    """``{id: handle}`` for each id in ``shown``: its shortest prefix (at least ``min_len``) matching no other id
    of ``all_ids``."""
    ids = sorted(set(all_ids))
    out = {}
    for job_id in shown:
        i = bisect.bisect_left(ids, job_id)
        longest = 0
        if i > 0:
            longest = _common(ids[i - 1], job_id)
        nxt = i + 1 if i < len(ids) and ids[i] == job_id else i
        if nxt < len(ids):
            longest = max(longest, _common(ids[nxt], job_id))
        out[job_id] = job_id[:max(min_len, longest + 1)]
    return out


def with_handles(r: Any, rows: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    """``rows`` (``traind list``'s) with each ``id`` replaced by the job's short handle.

    Only ids created within :data:`WINDOW_S` of a row's job are compared with it (one ZRANGEBYSCORE each, pipelined):
    ids sharing 8 characters were made within 4.1 s of each other, and the window leaves room for submitters' clocks
    being off from Redis'. Reading the whole index instead cost 0.34 s at 100,000 jobs. The rows of a page share
    their windows (one read per overlapping group); a window holding more than :data:`MAX_NEAR` ids (thousands of jobs
    submitted within minutes) is not read, and its rows show their full id (bench.scale: 50 such rows read 10,000
    ids each).
    """
    if not rows:
        return rows
    ids = [str(row["id"]) for row in rows]
    scores = r.zmscore(keys.JOBS_INDEX, ids)
    windows = _merged_windows([s for s in scores if s is not None], WINDOW_S * 1000)
    pipe = r.pipeline(transaction=False)
    for lo, hi in windows:
        pipe.zcount(keys.JOBS_INDEX, lo, hi)
    counts = pipe.execute()
    for (lo, hi), n in zip(windows, counts):
        if int(n) <= MAX_NEAR:
            pipe.zrangebyscore(keys.JOBS_INDEX, lo, hi)
    near = [m.decode(errors="replace") if isinstance(m, bytes) else str(m) for found in pipe.execute() for m in found]
    handles = shortest_unique_prefixes([*near, *ids], ids)
    crowded = [(lo, hi) for (lo, hi), n in zip(windows, counts) if int(n) > MAX_NEAR]
    for row_id, score in zip(ids, scores):  # in a window too crowded to read: the full id (unique, never ambiguous)
        if score is not None and any(lo <= score <= hi for lo, hi in crowded):
            handles[row_id] = row_id
    return [{**row, "id": handles[str(row["id"])]} for row in rows]


def _merged_windows(scores: list[float], half: float) -> list[tuple[float, float]]:
    """The windows ``[s - half, s + half]`` of ``scores`` merged where they overlap: the rows of one page are close
    in time, so one range read serves them all (one read per row read the same jobs 50 times: bench.scale).

    >>> _merged_windows([100.0, 5.0, 1000.0], 10.0)
    [(-5.0, 15.0), (90.0, 110.0), (990.0, 1010.0)]
    """
    out: list[tuple[float, float]] = []
    for s in sorted(scores):
        if out and s - half <= out[-1][1]:
            out[-1] = (out[-1][0], s + half)
        else:
            out.append((s - half, s + half))
    return out


def with_monitors(r: Any, jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``jobs`` with ``monitor`` set from each job's spec (``checkpoint.monitor``; the default is ``val_loss``)."""
    pipe = r.pipeline(transaction=False)
    for job in jobs:
        pipe.hget(keys.job(str(job.get("id"))), "spec")
    out = []
    for job, raw in zip(jobs, pipe.execute(raise_on_error=False) if jobs else [], strict=True):
        try:  # a wrong-type key (an exception here) or a corrupt spec: one row without its monitor
            monitor = json.loads(raw)["checkpoint"]["monitor"] if raw and not isinstance(raw, Exception) else None
        except (ValueError, TypeError, KeyError):
            monitor = None
        out.append({**job, "monitor": monitor if isinstance(monitor, str) and monitor else "val_loss"})
    return out
