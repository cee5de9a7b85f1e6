"""docs/redis.md's promises: the fencing token lives outside the status hash (and still fences), readable UTC
times sit next to every ms timestamp, events carry both."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.contract.states import JobState
from jobs.errors import FencedError
from jobs.redis.store import iso_ms
from tests.serve.conftest import slow_spec


def test_token_outside_the_hash_and_readable_times(redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    store = client.store
    jid = client.submit(slow_spec()).id
    h = {k.decode(): v.decode() for k, v in r.hgetall(keys.job(jid)).items()}
    assert h["created_at_utc"] == iso_ms(int(h["created_at"])) and h["updated_at_utc"] == iso_ms(int(h["updated_at"]))

    store.transition(jid, JobState.RUNNING, attempt=1, fields={"token": "tok-1", "worker": "w"}, lease_ttl_ms=60_000)
    h = {k.decode(): v.decode() for k, v in r.hgetall(keys.job(jid)).items()}
    assert "token" not in h and r.get(keys.token(jid)) == b"tok-1"
    assert h["started_at_utc"] == iso_ms(int(h["started_at"]))
    assert store.heartbeat(jid, "tok-1", 60_000) == (True, False)
    assert store.heartbeat(jid, "other", 60_000)[0] is False
    store.fenced_update(jid, "tok-1", fields={"epoch": 1}, events=[{"msg": "hello", "level": "info"}])
    with pytest.raises(FencedError):
        store.fenced_update(jid, "other", fields={"epoch": 2})
    with pytest.raises(FencedError):
        store.transition(jid, JobState.SUCCEEDED, token="other")

    store.transition(jid, JobState.SUCCEEDED, token="tok-1", event_msg="done")
    h = {k.decode(): v.decode() for k, v in r.hgetall(keys.job(jid)).items()}
    assert not r.exists(keys.token(jid))  # a finished job keeps no capability
    assert h["finished_at_utc"] == iso_ms(int(h["finished_at"]))
    events = store.events(jid)
    assert all(e["time"] == iso_ms(e["ts"]) for e in events) and [e["msg"] for e in events][-2:] == ["hello", "done"]


def test_finished_ttl_purges_through_the_supervisor(redis_url: str, storage_dir: Path, r: redis.Redis) -> None:
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    client = Client(redis_url=redis_url, storage=storage_dir)
    old = client.submit(slow_spec(name="old")).id
    client.store.request_cancel(old)  # queued -> cancelled: finished
    (storage_dir / "jobs" / old).mkdir(parents=True, exist_ok=True)
    time.sleep(0.3)  # the TTL below must have passed since it finished (a real age, not a race)
    live = client.submit(slow_spec(name="live")).id
    client.store.request_cancel(live)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRAIND_FINISHED_TTL_S": "0.25"}
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "supervise", "--burst", "--redis-url", redis_url,
                          "--storage", str(storage_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    ids = set(client.store.list_ids())
    assert old not in ids and not r.exists(keys.job(old)) and not (storage_dir / "jobs" / old).exists()
    assert live in ids or "purged 2" in out.stderr  # kept unless it, too, was older than the TTL by then
    assert "retention: purged" in out.stderr
