"""Compaction of finished jobs: a job's history hash and event list packed into one compressed value.

A finished job's per-epoch history and events are most of the ~41 KB a 100-epoch job keeps in Redis (issue 25),
and their JSON compresses ~5x. Some time after a job finishes, the supervisor packs both into one string
``keys.packed(job_id)``: ``MAGIC`` + zlib(JSON ``{"v": 1, "history": {epoch: raw entry}, "events": [raw event]}``)
and deletes the two keys, in one MULTI guarded by WATCH (a job that changed meanwhile is left for the next pass).
Entries are kept as their raw text (bytes beyond UTF-8 through ``surrogateescape``), so a compacted job reads exactly
as before, malformed entries included.

Every reader goes through :func:`history_raw` / :func:`events_raw` (or merges a ``GETRANGE`` it pipelined with
:func:`merge_events`): packed entries first, then whatever the live keys hold (a live history entry wins over a
packed one of the same epoch). A retry unpacks the job first (:func:`unpack`), so the worker's fenced writes
(``HDEL`` of epochs past the checkpoint it resumes from) see every entry.

Reads are bounded before decompressing: at most ``MAX_PACKED_BYTES`` are read (``GETRANGE``) and at most
``MAX_UNPACKED_BYTES`` inflated; a value over either bound, corrupt, or of an unknown format is one bad row (logged
once with the problem, the job reads as if it had no packed entries), never a crash.

>>> # pack(r, "abc123", events_max=2000); history_raw(r, "abc123")[b"1"]; unpack(r, "abc123", events_max=2000)
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any, NamedTuple

import redis

from jobs.contract import keys
from jobs.contract.records import log_problems
from jobs.contract.states import TERMINAL

MAGIC = b"TDZ1"  # format 1: zlib-compressed JSON
MAX_PACKED_BYTES = 8 * 1024 * 1024  # read bound of a packed value (GETRANGE 0 .. this)
MAX_UNPACKED_BYTES = 32 * 1024 * 1024  # inflate bound (~150,000 epochs of history); pack() keeps the lists above it
_TERMINAL = {s.value.encode() for s in TERMINAL}


class Packed(NamedTuple):
    """A packed value's entries as the live keys would return them (bytes), and what was wrong with it."""

    history: dict[bytes, bytes]
    events: list[bytes]
    problem: str | None = None


_EMPTY = Packed({}, [])


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def encode(history: dict[bytes, bytes], events: list[bytes]) -> bytes:
    """The packed value of ``history`` (raw hash) and ``events`` (raw list); raises ValueError when its JSON would
    exceed ``MAX_UNPACKED_BYTES`` (the reader would refuse it)."""
    doc = {"v": 1, "history": {_text(k): _text(v) for k, v in history.items()}, "events": [_text(e) for e in events]}
    text = json.dumps(doc, separators=(",", ":")).encode()  # ensure_ascii: surrogates travel as \\udcxx escapes
    if len(text) > MAX_UNPACKED_BYTES:
        raise ValueError(f"packed JSON of {len(text)} bytes exceeds {MAX_UNPACKED_BYTES}")
    return MAGIC + zlib.compress(text, 6)


def decode(raw: bytes | None) -> Packed:
    """Parse a packed value (as read, at most ``MAX_PACKED_BYTES`` + 1 bytes); never raises: a bad value comes back
    empty with ``problem`` set."""
    if not raw:
        return _EMPTY
    if len(raw) > MAX_PACKED_BYTES:
        return Packed({}, [], f"packed value over {MAX_PACKED_BYTES} bytes: not read")
    if not raw.startswith(MAGIC):
        return Packed({}, [], f"packed value of unknown format {raw[:4]!r}")
    try:
        d = zlib.decompressobj()
        text = d.decompress(raw[len(MAGIC):], MAX_UNPACKED_BYTES)
        if d.unconsumed_tail:
            return Packed({}, [], f"packed value inflates past {MAX_UNPACKED_BYTES} bytes: not read")
        if not d.eof:
            return Packed({}, [], "packed value is truncated")
        doc = json.loads(text)
    except (zlib.error, ValueError, RecursionError) as e:
        return Packed({}, [], f"packed value is corrupt: {e}"[:300])
    if not isinstance(doc, dict) or doc.get("v") != 1:
        return Packed({}, [], "packed value is not a version 1 document")
    hist, evs = doc.get("history"), doc.get("events")
    if not isinstance(hist, dict) or not isinstance(evs, list) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in hist.items()) or not all(
            isinstance(e, str) for e in evs):
        return Packed({}, [], "packed value: history must map text to text, events must be a list of text")
    return Packed({_bytes(k): _bytes(v) for k, v in hist.items()}, [_bytes(e) for e in evs])


def read(r: redis.Redis, job_id: str, raw: bytes | None = None, *, fetched: bool = False) -> Packed:
    """The job's packed entries (empty when it has none); a bad value is logged once and reads as empty."""
    if not fetched:
        raw = r.getrange(keys.packed(job_id), 0, MAX_PACKED_BYTES)
    p = decode(raw)
    if p.problem:
        log_problems(f"job {job_id}", [p.problem])
    return p


def history_raw(r: redis.Redis, job_id: str) -> dict[bytes, bytes]:
    """The job's history hash as HGETALL would return it, packed entries included (live ones win)."""
    pipe = r.pipeline(transaction=False)
    pipe.getrange(keys.packed(job_id), 0, MAX_PACKED_BYTES)
    pipe.hgetall(keys.history(job_id))
    packed_raw, live = pipe.execute()
    if not packed_raw:
        return live
    return {**read(r, job_id, packed_raw, fetched=True).history, **live}


def history_entry(r: redis.Redis, job_id: str, epoch: int) -> bytes | None:
    """One epoch's raw entry (one HGET while the job is not compacted)."""
    pipe = r.pipeline(transaction=False)
    pipe.hget(keys.history(job_id), str(epoch))
    pipe.exists(keys.packed(job_id))
    raw, packed = pipe.execute()
    if raw is not None or not packed:
        return raw
    return read(r, job_id).history.get(str(epoch).encode())


def merge_events(r: redis.Redis, job_id: str, packed_raw: bytes | None, live: list[bytes],
                 start: int = 0) -> list[bytes]:
    """Packed events then ``live`` (the whole live list when there are packed events), sliced as LRANGE start -1."""
    if not packed_raw:
        return live
    evs = read(r, job_id, packed_raw, fetched=True).events + live
    return evs[start:] if start >= 0 else evs[max(len(evs) + start, 0):]


def events_raw(r: redis.Redis, job_id: str, start: int = 0) -> list[bytes]:
    """The job's events from ``start`` as ``LRANGE events start -1`` would return them, packed ones included."""
    pipe = r.pipeline(transaction=False)
    pipe.getrange(keys.packed(job_id), 0, MAX_PACKED_BYTES)
    pipe.lrange(keys.events(job_id), start, -1)
    packed_raw, live = pipe.execute()
    if not packed_raw:
        return live
    if start != 0:
        live = r.lrange(keys.events(job_id), 0, -1)  # indexes count the packed events first
    return merge_events(r, job_id, packed_raw, live, start)


def pack(r: redis.Redis, job_id: str, events_max: int) -> bool:
    """Pack a finished job's history and events into ``keys.packed``; True when it did.

    Not packed (False): the job is not in a terminal state, has nothing to pack, changed while being packed (WATCH;
    the next pass tries again), or its packed value would be too large to read back (the lists stay).
    """
    k_job, k_hist, k_ev, k_packed = keys.job(job_id), keys.history(job_id), keys.events(job_id), keys.packed(job_id)
    with r.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(k_job, k_hist, k_ev, k_packed)
            if pipe.hget(k_job, "state") not in _TERMINAL:
                return False
            hist, evs = pipe.hgetall(k_hist), pipe.lrange(k_ev, 0, -1)
            if not hist and not evs:
                return False
            old_raw = pipe.getrange(k_packed, 0, MAX_PACKED_BYTES)
            old = decode(old_raw)
            if old.problem:  # never overwrite a value we cannot read: an operator may still recover it
                log_problems(f"job {job_id}", [old.problem, "not compacted again"])
                return False
            try:
                value = encode({**old.history, **hist}, (old.events + evs)[-events_max:])
            except ValueError as e:
                log_problems(f"job {job_id}", [f"not compacted: {e}"])
                return False
            pipe.multi()
            pipe.set(k_packed, value)
            pipe.delete(k_hist, k_ev)
            pipe.execute()
            return True
        except redis.WatchError:
            return False


def unpack(r: redis.Redis, job_id: str, events_max: int, attempts: int = 5) -> bool:
    """Put a compacted job's packed entries back into its history hash and events list (before a retry makes it
    run again); True when there was something to unpack. A bad packed value is kept (logged), not unpacked."""
    k_hist, k_ev, k_packed = keys.history(job_id), keys.events(job_id), keys.packed(job_id)
    for _ in range(attempts):
        with r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(k_hist, k_ev, k_packed)
                raw = pipe.getrange(k_packed, 0, MAX_PACKED_BYTES)
                if not raw:
                    return False
                p = read(r, job_id, raw, fetched=True)
                if p.problem:
                    return False
                live_hist, live_ev = pipe.hgetall(k_hist), pipe.lrange(k_ev, 0, -1)
                add = {k: v for k, v in p.history.items() if k not in live_hist}
                evs = (p.events + live_ev)[-events_max:]
                pipe.multi()
                if add:
                    pipe.hset(k_hist, mapping=add)
                pipe.delete(k_ev)
                if evs:
                    pipe.rpush(k_ev, *evs)
                pipe.delete(k_packed)
                pipe.execute()
                return True
            except redis.WatchError:
                continue
    raise redis.WatchError(f"job {job_id}: unpack kept racing with writes")


def compact_step(r: redis.Redis, now_ms: int, after_ms: int, events_max: int, limit: int = 50,
                 budget_s: float | None = None) -> int:
    """Pack up to ``limit`` jobs that finished at least ``after_ms`` ago, stopping once ``budget_s`` seconds were
    spent (a supervisor pass stays short while a backlog is worked off); returns how many were packed.

    Walks the finished index (``keys.IDX_FINISHED``, score = finish time, ties in id order) from a cursor kept in
    Redis (``keys.COMPACT_CURSOR``: ``"<score> <job id>"`` of the last job looked at), so each finished job is looked
    at once; a retried job finishes again with a later score and is packed again. The first passes walk the jobs
    that finished before compaction existed. (Should the cursor's job itself have left the index, the walk goes on
    after its score; a job that finished in that same millisecond may stay unpacked: it reads the same either way.)
    """
    cut = now_ms - after_ms
    cur = (r.get(keys.COMPACT_CURSOR) or b"").split(b" ", 1)
    rows: list[tuple[bytes, float]] = []
    if len(cur) == 2 and cur[0].isdigit():
        score, member = int(cur[0]), cur[1]
        pipe = r.pipeline(transaction=False)
        pipe.zrank(keys.IDX_FINISHED, member)
        pipe.zscore(keys.IDX_FINISHED, member)
        rank, sc = pipe.execute()
        if rank is not None and sc is not None and int(sc) == score:  # ties at that score continue in id order
            rows = r.zrange(keys.IDX_FINISHED, rank + 1, rank + limit, withscores=True)
            rows = [(m, s) for m, s in rows if s <= cut]
        else:
            rows = r.zrangebyscore(keys.IDX_FINISHED, f"({score}", cut, start=0, num=limit, withscores=True)
    else:
        rows = r.zrangebyscore(keys.IDX_FINISHED, "-inf", cut, start=0, num=limit, withscores=True)
    t0, n, done = time.monotonic(), 0, 0
    for m, _ in rows:
        n += pack(r, m.decode(errors="replace"), events_max)
        done += 1
        if budget_s is not None and time.monotonic() - t0 > budget_s:
            break
    if done:
        last, sc = rows[done - 1]
        r.set(keys.COMPACT_CURSOR, str(int(sc)).encode() + b" " + last)
    return n


def packed_problem(r: redis.Redis, job_id: str) -> str | None:
    """What is wrong with the job's packed value (None when it is fine or absent): for status views."""
    return decode(r.getrange(keys.packed(job_id), 0, MAX_PACKED_BYTES)).problem


def stats(value: bytes) -> dict[str, Any]:
    """Sizes of one packed value (for benchmarks and docs)."""
    p = decode(value)
    return {"bytes": len(value), "history": len(p.history), "events": len(p.events), "problem": p.problem}
