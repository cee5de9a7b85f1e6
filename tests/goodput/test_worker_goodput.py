"""Issue 19 with real workers, a real supervisor and real, tiny Keras models: a tf.data job SIGKILLed mid-epoch
resumes at its batch with every sample trained once per epoch; a hang is noticed by the worker's watchdog (and
its machine drained as a lemon, then put back) or, with the watchdog off, by the supervisor; the goodput split of a
job sums to its wall time."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.redis import lemons, telemetry
from tests.conftest import ROOT, Procs, log_of, wait_for

N, BATCH = 512, 8  # 64 batches per epoch


def spec(name: str, *, epochs: int, max_restarts: int = 3, **model_kw: Any) -> dict[str, Any]:
    return {"name": name, "model": {"builder": "tests.models:counting_model",
                                    "builder_kwargs": {"n": N, "batch_delay_s": 0.03, **model_kw}},
            "data": {"loader": "tests.models:id_dataset", "loader_kwargs": {"n": N, "batch_size": BATCH}},
            "fit": {"epochs": epochs, "seed": 3}, "max_restarts": max_restarts,
            "checkpoint": {"monitor": "val_loss", "save_weights_only": True}}


def events(r: redis.Redis, job_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(x) for x in r.lrange(keys.events(job_id), 0, -1)) if e.get("kind") == kind]


def wait_state(client: Client, job_id: str, state: str, procs: list[Any], timeout: float = 300) -> None:
    try:
        wait_for(lambda: client.store.raw(job_id)["state"] == state, timeout, f"job {state}")
    except AssertionError:
        raise AssertionError(f"{client.store.raw(job_id)}\n" + "\n".join(log_of(p)[-3000:] for p in procs)) from None


def traind(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args, "--redis-url", redis_url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_tf_data_job_killed_mid_epoch_resumes_at_its_batch_each_sample_once(
        redis_url: str, storage_dir: Path, procs: Procs, r: redis.Redis, tmp_path: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    # Killed (SIGKILL, by itself, once) at optimizer step 64 + 50: epoch 2 after 50 of its 64 batches. Step
    # checkpoints every 0.5 s (the default interval keeps their cost under 1 %: seconds apart, too few in a test).
    s = spec("tfdata-kill", epochs=3, kill_at_step=64 + 50, marker=str(tmp_path / "killed"))
    s["checkpoint"]["every_s"] = 0.5
    job = client.submit(s)
    sup = procs.supervisor(redis_url, storage_dir)
    workers = [procs.worker(redis_url, storage_dir, name=f"w{i}") for i in range(2)]
    wait_state(client, job.id, "succeeded", [sup, *workers])

    st = client.store.get(job.id)
    assert st["restarts"] == 1 and st["attempt"] == 2
    resumed = events(r, job.id, "resumed")
    assert len(resumed) == 1 and resumed[0]["epoch"] == 2 and 0 < resumed[0]["batch"] <= 50, resumed
    data = events(r, job.id, "data_resumed")
    assert len(data) == 1 and data[0]["how"] == "iterator" and data[0]["batch"] == resumed[0]["batch"], data
    # Every sample trained exactly once per epoch, across the kill: the counter is part of the checkpointed state.
    counts = job.load_model("final").get_layer("seen").counts.numpy()
    assert counts.tolist() == [3.0] * N, np.unique(counts, return_counts=True)

    # Where the wall time went: the parts sum to it; the kill cost detection, restart and redone work.
    g = st["goodput"]
    parts = sum(g[k] for k in ("queued_s", "starting_s", "productive_s", "checkpoint_s", "redone_s", "detection_s",
                               "restart_s"))
    assert abs(parts - g["wall_s"]) < 0.01 and g["detection_s"] > 0 and g["restart_s"] > 0 and g["redone_s"] >= 0
    assert 0 < g["ratio"] < 1
    out = traind(redis_url, "status", job.id, "--storage", str(storage_dir))
    assert out.returncode == 0 and "goodput" in out.stdout and "% productive" in out.stdout, out
    # Counted once the attempt has wound down (after the success was recorded from inside fit).
    counters = wait_for(lambda: (c := telemetry.read_counters(r)).get("goodput:wall_s") and c, 60, "fleet goodput")
    assert counters["goodput:wall_s"] >= g["wall_s"] - 1 and counters["goodput:detection_s"] > 0


def test_hang_noticed_by_the_watchdog_drains_the_lemon_machine_until_undrained(
        redis_url: str, storage_dir: Path, procs: Procs, r: redis.Redis, tmp_path: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(spec("hang-watchdog", epochs=2, hang_at_step=64 + 40, marker=str(tmp_path / "hung")))
    env = {"TRAIND_PROGRESS_FLOOR_S": "3", "TRAIND_LEMON_FAILURES": "1"}
    sup = procs.supervisor(redis_url, storage_dir)
    w = procs.worker(redis_url, storage_dir, env=env, name="w")
    wait_for(lambda: events(r, job.id, "hung"), 300, "the hang to be noticed")
    hung = events(r, job.id, "hung")[0]
    assert (hung["by"], hung["epoch"], hung["batch"]) == ("watchdog", 2, 40), hung
    assert "_hook" in hung["stacks"] and "Thread 0x" in hung["stacks"]  # every thread's stack, the hung one too
    machine = lemons.machine_of(socket.gethostname(), "cpu")
    wait_for(lambda: lemons.is_drained(r, machine), 30, "the machine drained")
    # The hung process was replaced in place (same pid, a fresh interpreter) and serves again, drained.
    def drained_worker() -> bool:
        return any(x.get("drained") for x in json.loads(traind(redis_url, "workers", "--json").stdout or "[]"))

    wait_for(drained_worker, 180, "the replaced worker registered as drained")
    assert w.poll() is None
    listing = traind(redis_url, "workers").stdout
    assert f"drained  {machine}" in listing and " drained " in listing.splitlines()[1], listing
    health = traind(redis_url, "health", "--worker", "local")
    assert health.returncode == 1 and "drained" in health.stderr, health
    assert client.store.raw(job.id)["state"] == "requeued"  # no worker of a drained machine takes it

    undrain = traind(redis_url, "undrain", machine)
    assert undrain.returncode == 0, undrain
    wait_state(client, job.id, "succeeded", [sup, w])
    st = client.store.get(job.id)
    assert st["restarts"] == 1 and st["goodput"]["detection_s"] >= 3


def test_hang_with_the_watchdog_off_is_handed_back_by_the_supervisor(
        redis_url: str, storage_dir: Path, procs: Procs, r: redis.Redis, tmp_path: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(spec("hang-supervisor", epochs=2, hang_at_step=40, marker=str(tmp_path / "hung")))
    wenv = {"TRAIND_PROGRESS_WATCHDOG": "false", "TRAIND_PROGRESS_TIMEOUT_S": "2", "TRAIND_LEMON_FAILURES": "0"}
    sup = procs.supervisor(redis_url, storage_dir, env={"TRAIND_PROGRESS_CHECK_GRACE_S": "2",
                                                        "TRAIND_LEMON_FAILURES": "0"})
    ws = [procs.worker(redis_url, storage_dir, env=wenv, name=f"w{i}") for i in range(2)]
    wait_state(client, job.id, "succeeded", [sup, *ws])
    hung = events(r, job.id, "hung")
    # The supervisor names the last batch the worker published (progress is written at most once a second).
    assert len(hung) == 1 and hung[0]["by"] == "supervisor" and hung[0]["epoch"] == 1, hung
    assert 0 < hung[0]["batch"] <= 40, hung
    assert client.store.raw(job.id)["restarts"] == "1"
