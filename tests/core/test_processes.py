"""Real worker processes: a YAML spec submitted with the CLI and jobs from the client, two workers on one queue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis

from jobs.client import Client
from tests.conftest import ROOT, Procs, log_of, wait_for

YAML = """
name: yaml-job
model:
  builder: examples.regression:build_model
  builder_kwargs: {units: 8, learning_rate: 0.05}
data:
  loader: examples.regression:load_data
  loader_kwargs: {n: 300}
fit: {epochs: 3, batch_size: 50, validation_split: 0.3, seed: 1}
checkpoint: {monitor: val_loss, save_weights_only: true}
"""


def traind_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_two_worker_processes_share_a_queue_without_double_taking(
        redis_url: str, r: redis.Redis, storage_dir: Path, procs: Procs, tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(YAML)
    sub = traind_cli("submit", str(spec_file), "--redis-url", redis_url, "--storage", str(storage_dir))
    assert sub.returncode == 0, sub.stderr
    yaml_job = sub.stdout.strip()
    client = Client(redis_url=redis_url, storage=storage_dir)
    base = json.loads(json.dumps(client.store.get(yaml_job)["spec"]))
    handles = [client.submit({**base, "name": f"client-{i}"}) for i in range(5)]
    ids = [yaml_job] + [h.id for h in handles]

    w1 = procs.worker(redis_url, storage_dir, "--worker-id", "w1")
    w2 = procs.worker(redis_url, storage_dir, "--worker-id", "w2")

    def all_done() -> bool:
        return all(client.store.raw(i)["state"] in ("succeeded", "failed", "cancelled") for i in ids)

    try:
        wait_for(all_done, 240, "all six jobs to finish")
    except AssertionError:
        raise AssertionError(f"w1:\n{log_of(w1)}\nw2:\n{log_of(w2)}") from None
    for jid in ids:
        st = client.store.get(jid)
        assert st["state"] == "succeeded", st.get("error")
        assert st["attempt"] == 1 and st["restarts"] == 0 and st["worker"] in ("w1", "w2")
        starts = [e for e in client.store.events(jid) if e["kind"] == "training"]
        assert len(starts) == 1, f"job {jid} was started {len(starts)} times: {starts}"
        assert len(st["history"]) == 3
    # the CLI shows the same record
    out = traind_cli("status", yaml_job, "--json", "--redis-url", redis_url)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    for field in ("id", "name", "state", "epoch", "epochs", "restarts", "best_epoch", "best_value", "stopped_early",
                  "worker", "history"):
        assert field in shown
    assert shown["name"] == "yaml-job" and shown["epoch"] == 3 and len(shown["history"]) == 3
    # both workers are registered with psutil figures while alive
    for wid in ("w1", "w2"):
        info = {k.decode(): v.decode() for k, v in r.hgetall(f"traind:worker:{wid}").items()}
        assert info["device"] == "cpu" and float(info["rss_mb"]) > 50 and int(info["pid"]) > 0


def test_an_idle_worker_stops_in_seconds_when_redis_is_gone(procs: Procs, storage_dir: Path, tmp_path: Path) -> None:
    """Issue 22 item 6: SIGTERM to an idle worker whose Redis is gone ends it within seconds, not after redis-py's
    retries (~30 s) twice over (the call in flight, then the unregister)."""
    import signal

    from testkit.cluster import RedisServer

    srv = RedisServer(tmp_path / "own-redis").start()  # a server of this test's own, to stop
    try:
        w = procs.worker(srv.url, storage_dir, "--worker-id", "idle-w")
        wait_for(lambda: redis.Redis.from_url(srv.url).zscore("traind:workers", "idle-w") is not None, 120,
                 "the worker to register")
    finally:
        srv.stop()
    w.send_signal(signal.SIGTERM)
    try:
        assert w.wait(15) == 0, log_of(w)  # a deadline well under one retry budget of redis-py (~30 s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker was still running 15 s after SIGTERM:\n{log_of(w)}") from None
