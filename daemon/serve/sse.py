"""Server-Sent Events driven by Redis pub/sub: one subscription per serve process, fanned out to every viewer.

Workers and supervisors publish a small notification on :data:`jobs.redis.telemetry.CHANNEL` whenever they change a job
(state, progress, epoch end, checkpoint, event). The :class:`Hub` reads the changed job **once** per notification
(coalescing bursts: while one read is in flight, further notifications for that job merge into the next read)
and hands the same encoded bytes to every viewer of that job and of the jobs list. Idle jobs cost nothing: no
job hash is polled.

Streams: ``snapshot`` (full status on connect), ``status`` (job without history), ``epoch`` (new history entries),
``events`` (events not sent before, with the newest one's ``ts`` as the SSE ``id``), ``job`` (a list row),
``resync`` (Redis reconnected: re-read), and ``: keepalive`` comments.

>>> # hub = Hub(store, redis.asyncio.from_url(url)); asyncio.create_task(hub.run())
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis

from jobs.contract import keys
from jobs.contract.records import JobRecord, log_problems, parse_event, to_int
from jobs.ops.admin import LIST_FIELDS
from jobs.ops.lookup import summary
from jobs.redis import packed, telemetry
from jobs.redis.store import JobStore, parse_history

log = logging.getLogger("traind.serve.sse")

ALL = "*"  # subscription key of the jobs list
QUEUE_MAX = 256  # a viewer this far behind is dropped; its browser reconnects and starts from a snapshot
EVENTS_TAIL = 50


def encode(event: str, data: Any, event_id: Any = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""  # the client's Last-Event-ID on a reconnect
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


@dataclass
class _Pending:
    kinds: set[str] = field(default_factory=set)
    epochs: set[int] = field(default_factory=set)


class Hub:
    """Fan-out of Redis notifications to SSE viewers."""

    def __init__(self, store: JobStore, aconn: aredis.Redis) -> None:
        self.store = store
        self.aconn = aconn
        self.viewers: dict[str, set[asyncio.Queue[bytes | None]]] = {}
        self._pending: dict[str, _Pending] = {}
        self._inflight: set[str] = set()
        self._events_sent: dict[str, Any] = {}  # job -> the newest event its viewers have (snapshot or `events`)
        self.notifications = 0  # counters the benchmark and tests read
        self.reads = 0
        self.connected = asyncio.Event()

    # -- viewers ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def viewer(self, key: str) -> Any:
        q: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        self.viewers.setdefault(key, set()).add(q)
        try:
            yield q
        finally:
            self.viewers.get(key, set()).discard(q)
            if not self.viewers.get(key):
                self.viewers.pop(key, None)
                self._events_sent.pop(key, None)

    def events_sent(self, job_id: str, newest: Any) -> None:
        """A viewer's snapshot held the events up to ``newest``: ``events`` messages start after it."""
        self._events_sent.setdefault(job_id, newest)

    def _new_events(self, job_id: str, tail: list[Any]) -> list[Any]:
        """The events of ``tail`` after the newest one already sent (all of it when that one is not in it)."""
        last = self._events_sent.get(job_id)
        for i in range(len(tail) - 1, -1, -1):
            if last is not None and tail[i] == last:
                tail = tail[i + 1:]
                break
        if tail:
            self._events_sent[job_id] = tail[-1]
        return tail

    def viewer_count(self) -> int:
        return sum(len(v) for v in self.viewers.values())

    def _send(self, key: str, payload: bytes) -> None:
        for q in list(self.viewers.get(key, ())):
            try:
                q.put_nowait(payload)
            except asyncio.QueueFull:  # too slow: end its stream (None) so the browser reconnects and resyncs
                self.viewers[key].discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)

    # -- the subscription --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Subscribe (reconnecting with backoff) until cancelled."""
        backoff = 0.1
        while True:
            pubsub = self.aconn.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(telemetry.CHANNEL)
                if not self.connected.is_set():
                    self.connected.set()
                else:
                    self._broadcast_resync()
                backoff = 0.1
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        self._on_message(msg["data"])
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as e:
                log.warning("notification subscription lost (%s); resubscribing in %.1f s", e, backoff)
                self._broadcast_resync()  # whatever happened meanwhile was missed: viewers re-read
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _broadcast_resync(self) -> None:
        payload = encode("resync", {})
        for key in list(self.viewers):
            self._send(key, payload)

    def _on_message(self, data: bytes | str) -> None:
        self.notifications += 1
        try:
            note = json.loads(data)
            job_id = str(note["job"])
        except (ValueError, KeyError, TypeError):
            return  # not ours / malformed: a notification is only a hint
        if job_id not in self.viewers and ALL not in self.viewers:
            return
        p = self._pending.setdefault(job_id, _Pending())
        p.kinds.add(str(note.get("kind", "")))
        if isinstance(note.get("epoch"), int):
            p.epochs.add(note["epoch"])
        if job_id not in self._inflight:
            self._inflight.add(job_id)
            asyncio.get_running_loop().create_task(self._flush(job_id))

    async def _flush(self, job_id: str) -> None:
        try:
            while (p := self._pending.pop(job_id, None)) is not None:
                detail = job_id in self.viewers
                try:
                    out = await asyncio.to_thread(self._read, job_id, p, detail)
                except redis.RedisError as e:
                    log.warning("job %s: cannot read after notification: %s", job_id, e)
                    return
                self.reads += 1
                for key, payload in out:
                    self._send(key, payload)
        finally:
            self._inflight.discard(job_id)

    def _read(self, job_id: str, p: _Pending, detail: bool) -> list[tuple[str, bytes]]:
        """One pipelined read of what changed; returns (viewer key, encoded event) pairs."""
        pipe = self.store.r.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.zscore(keys.LEASES, job_id)
        epochs = sorted(p.epochs)
        if detail and epochs:
            pipe.hmget(keys.history(job_id), [str(e) for e in epochs])
        if detail:
            pipe.lrange(keys.events(job_id), -EVENTS_TAIL, -1)
            pipe.getrange(keys.packed(job_id), 0, packed.MAX_PACKED_BYTES)  # a compacted job's (empty: none)
        res = pipe.execute()
        rec = JobRecord.parse(res[0], job_id)
        if not rec.exists:
            return [(k, encode("deleted", {"id": job_id})) for k in (job_id, ALL) if k in self.viewers]
        log_problems(f"job {job_id}", rec.problems)
        status = rec.to_dict()
        status["lease_expires_at"] = to_int(res[1]) if res[1] is not None else None
        out: list[tuple[str, bytes]] = []
        if ALL in self.viewers:
            row = {f: status.get(f) for f in LIST_FIELDS}
            row["monitor"] = rec.monitor
            if rec.problems:
                row["problems"] = list(rec.problems)
            out.append((ALL, encode("job", row)))
        if detail:
            out.append((job_id, encode("status", summary(status))))
            i = 2
            if epochs:
                found = {str(e).encode(): v for e, v in zip(epochs, res[i]) if v is not None}
                entries = parse_history(found, f"job {job_id} history")
                if entries:
                    out.append((job_id, encode("epoch", entries)))
                i += 1
            raws = packed.merge_events(self.store.r, job_id, res[i + 1], res[i], -EVENTS_TAIL) if res[i + 1] else res[i]
            tail = [parse_event(v, f"job {job_id} events") for v in raws]
            if new := self._new_events(job_id, tail):  # only new ones, once
                out.append((job_id, encode("events", new, new[-1].get("ts") if isinstance(new[-1], dict) else None)))
        return out


async def stream(hub: Hub, key: str, snapshot: Callable[[], bytes] | None, is_disconnected: Any,
                 keepalive_s: float) -> AsyncIterator[bytes]:
    """The body of one SSE response: a snapshot, then what the hub sends, with keepalives.

    The viewer is registered *before* the snapshot is read, so no change falls between the two.
    """
    with hub.viewer(key) as q:
        yield b"retry: 2000\n\n"
        if snapshot is not None:
            yield await asyncio.to_thread(snapshot)
        while True:
            try:
                item = await asyncio.wait_for(q.get(), timeout=keepalive_s)
            except asyncio.TimeoutError:
                if await is_disconnected():
                    return
                yield b": keepalive\n\n"
                continue
            if item is None:
                return
            yield item
