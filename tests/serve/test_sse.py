"""Server-Sent Events: a viewer of a training job receives the snapshot, every epoch and the state changes as the
worker publishes them through Redis; the list stream gets one row per change."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import redis

from jobs.redis import telemetry
from tests.conftest import Procs, log_of, wait_for
from tests.serve.conftest import Served, slow_spec


class SSEReader:
    """Reads one SSE stream in a thread, keeping (event, data) pairs."""

    def __init__(self, served: Served, path: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.ids: list[str] = []
        self.client = served.client(headers=headers or {})
        self._t = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._stop = False
        self._t.start()

    def _run(self, path: str) -> None:
        with self.client.stream("GET", path, timeout=None) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            ev = "message"
            for line in resp.iter_lines():
                if self._stop:
                    return
                if line.startswith("id: "):
                    self.ids.append(line[4:])
                elif line.startswith("event: "):
                    ev = line[7:]
                elif line.startswith("data: "):
                    self.events.append((ev, json.loads(line[6:])))

    def of(self, kind: str) -> list[Any]:
        return [d for e, d in list(self.events) if e == kind]

    def close(self) -> None:
        self._stop = True
        self.client.close()


def test_job_stream_follows_a_training_job(served: Served, redis_url: str, storage_dir: Path, procs: Procs,
                                           r: redis.Redis) -> None:
    with served.client() as c:
        jid = c.post("/api/v1/jobs", json={"spec": slow_spec(epochs=4, batch_delay_s=0.05)}).json()["id"]
    job = SSEReader(served, f"/api/v1/jobs/{jid}/stream")
    rows = SSEReader(served, "/api/v1/stream")
    try:
        wait_for(lambda: job.of("snapshot"), 30, "the snapshot")
        snap = job.of("snapshot")[0]
        assert snap["state"] == "queued" and snap["history"] == [] and snap["events"][0]["msg"] == "submitted"
        w = procs.worker(redis_url, storage_dir)
        try:
            wait_for(lambda: any(s["state"] == "succeeded" for s in job.of("status")), 240, "status: succeeded")
        except AssertionError:
            raise AssertionError(log_of(w)) from None
        states = [s["state"] for s in job.of("status")]
        assert "running" in states and states.index("running") < states.index("succeeded")
        epochs = sorted({e["epoch"] for batch in job.of("epoch") for e in batch})
        assert epochs == [1, 2, 3, 4]
        with served.client() as c:
            history = c.get(f"/api/v1/jobs/{jid}/history").json()
        streamed = {e["epoch"]: e for batch in job.of("epoch") for e in batch}
        assert [streamed[h["epoch"]] for h in history] == history  # the stream shows what Redis holds
        assert any("epoch 4" in e["msg"] for batch in job.of("events") for e in batch)
        assert all("token" not in s for s in job.of("status"))
        wait_for(lambda: any(x["id"] == jid and x["state"] == "succeeded" for x in rows.of("job")), 30,
                 "the list row to say succeeded")
        # Push, not polling: the hub read the job once per (coalesced) notification, never more.
        hub = served.app.state.hub
        assert 0 < hub.reads <= hub.notifications
    finally:
        job.close()
        rows.close()


def test_a_notification_alone_drives_the_stream(served: Served, r: redis.Redis) -> None:
    """A change written without a notification is not seen until one arrives: nothing polls the job hash."""
    with served.client() as c:
        jid = c.post("/api/v1/jobs", json={"spec": slow_spec()}).json()["id"]
    job = SSEReader(served, f"/api/v1/jobs/{jid}/stream")
    try:
        wait_for(lambda: job.of("snapshot"), 30, "the snapshot")
        reads = served.app.state.hub.reads
        r.hset(f"traind:job:{jid}", "name", "renamed-quietly")
        telemetry.publish(r, jid, "progress")
        wait_for(lambda: any(s["name"] == "renamed-quietly" for s in job.of("status")), 30, "the pushed status")
        assert served.app.state.hub.reads == reads + 1
    finally:
        job.close()


def test_events_are_sent_once_and_a_reconnect_resumes_after_last_event_id(served: Served, r: redis.Redis) -> None:
    """Issue 22 item 6: each `events` message has only events not sent before; a client reconnecting with
    Last-Event-ID gets a snapshot without the events it had."""
    from jobs.contract.events import EventKind
    from jobs.redis.store import JobStore

    store = JobStore(r)
    with served.client() as c:
        jid = c.post("/api/v1/jobs", json={"spec": slow_spec()}).json()["id"]
    job = SSEReader(served, f"/api/v1/jobs/{jid}/stream")
    try:
        wait_for(lambda: job.of("snapshot"), 30, "the snapshot")
        assert [e["msg"] for e in job.of("snapshot")[0]["events"]] == ["submitted"]
        for i in range(3):
            store.add_event(jid, EventKind.SUBMITTED, f"note {i}")
            wait_for(lambda i=i: any(e["msg"] == f"note {i}" for batch in job.of("events") for e in batch), 30,
                     f"note {i} to be streamed")
        sent = [e["msg"] for batch in job.of("events") for e in batch]
        assert sent == ["note 0", "note 1", "note 2"], sent  # each once, none of the snapshot's again
        assert job.ids[-1] == str(store.events(jid)[-1]["ts"])
    finally:
        job.close()
    since = store.events(jid)[2]["ts"]  # "note 1": the client had it
    again = SSEReader(served, f"/api/v1/jobs/{jid}/stream", headers={"Last-Event-ID": str(since)})
    try:
        wait_for(lambda: again.of("snapshot"), 30, "the snapshot after a reconnect")
        msgs = [e["msg"] for e in again.of("snapshot")[0]["events"]]
        assert "submitted" not in msgs and "note 0" not in msgs and msgs[-1] == "note 2", msgs
    finally:
        again.close()
