"""TensorBoard event files of a job killed mid-run and resumed (each epoch once, values equal history), JSON
structured logs (claim/epoch/checkpoint/requeue/finish lines), and the ops commands: workers, health, retry, purge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from jobs.client import Client
from jobs.errors import SpecError
from tests.conftest import ROOT, Procs, log_of, wait_for
from tests.fault.helpers import Cluster, kill_tree, wait_terminal
from tests.serve.conftest import slow_spec


def traind(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def read_tensorboard(logdir: Path) -> tuple[Counter[tuple[str, int]], dict[tuple[str, int], float], list[str]]:
    import tensorflow as tf

    counts: Counter[tuple[str, int]] = Counter()
    values: dict[tuple[str, int], float] = {}
    texts: list[str] = []
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        for ev in tf.compat.v1.train.summary_iterator(str(f)):
            for v in ev.summary.value:
                if v.tag == "events":
                    arr = tf.make_ndarray(v.tensor)
                    texts.append(arr.item().decode() if arr.shape == () else str(arr))
                else:  # metrics are classic scalars (simple_value), which every TensorBoard reader lists
                    assert v.WhichOneof("value") == "simple_value", v
                    counts[(v.tag, ev.step)] += 1
                    values[(v.tag, ev.step)] = v.simple_value
    return counts, values, texts


def test_resumed_job_has_each_epoch_once_in_tensorboard_and_json_logs(redis_url: str, storage_dir: Path,
                                                                       procs: Procs) -> None:
    env = {"TRAIND_LOG_FORMAT": "json"}
    cl = Cluster(procs, redis_url, storage_dir, env=env)
    h = cl.submit(slow_spec(name="tb", epochs=5, batch_delay_s=0.1))
    cl.start("tb-w1", supervisors=1)
    cl.wait_registered("tb-w1")
    wait_for(lambda: 2 in {m["epoch"] for m in cl.store.checkpoints(h.id).values()}, 120,
             "epoch 2's checkpoint")
    kill_tree(cl.workers["tb-w1"])  # SIGKILL mid-run: the supervisor requeues, the next worker resumes
    cl.worker("tb-w2")
    try:
        st = wait_terminal(cl.store, h.id, timeout=240)
    except AssertionError:
        raise AssertionError(cl.logs()) from None
    assert st["state"] == "succeeded" and st["attempt"] == 2, cl.logs()

    runs = [d.name for d in (storage_dir / "jobs" / h.id / "tensorboard").iterdir()]
    assert runs == [f"tb-{h.id[:8]}"], runs  # the run TensorBoard lists: <name>-<short id> (issue 22 item 6)
    tb = storage_dir / "jobs" / h.id / "tensorboard" / runs[0]
    counts, values, texts = read_tensorboard(tb)
    history = {e["epoch"]: e for e in st["history"]}
    for tag in ("loss", "val_loss", "mae", "val_mae", "learning_rate"):
        assert [counts[(tag, e)] for e in range(1, 6)] == [1] * 5, (tag, counts)
        for e in range(1, 6):  # the curve is the history Redis holds (float32 in the event file)
            assert values[(tag, e)] == pytest.approx(history[e][tag], rel=1e-6)
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1  # the resumed attempt rewrote the run into one file
    try:  # what the docs promise: TensorBoard's own reader lists one scalar series per metric (issue 22 item 6)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # tensorboard is not a dependency; the simple_value records above are what it reads
        pass
    else:
        acc = EventAccumulator(str(tb))
        acc.Reload()
        assert {"loss", "val_loss", "learning_rate"} <= set(acc.Tags()["scalars"])
        assert [s.step for s in acc.Scalars("val_loss")] == [1, 2, 3, 4, 5]
    joined = "\n".join(texts)
    assert "submitted" in joined and "epoch 5" in joined and "lost" in joined

    # One JSON line per claim, epoch, checkpoint, requeue and finish in the worker and supervisor logs.
    lines = [json.loads(x) for p in [*cl.workers.values(), *cl.supervisors]
             for x in Path(p.log_path).read_text().splitlines() if x.startswith("{")]  # type: ignore[attr-defined]
    mine = [x for x in lines if x.get("job") == h.id]
    kinds = Counter(x["event"] for x in mine)
    assert kinds["claim"] == 2 and kinds["requeue"] == 1 and kinds["finish"] == 1, kinds
    assert kinds["epoch"] >= 5 and kinds["checkpoint"] >= 5, kinds
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    w2 = Path(cl.workers["tb-w2"].log_path).read_text()  # type: ignore[attr-defined]
    assert all(x.startswith("{") for x in w2.splitlines() if x.strip()), w2[-2000:]


def test_ops_commands(redis_url: str, storage_dir: Path, procs: Procs) -> None:
    common = ("--redis-url", redis_url, "--storage", str(storage_dir))
    assert traind("health", *common).returncode == 0
    down = traind("health", "--redis-url", "redis://127.0.0.1:1/0")
    assert down.returncode == 1 and "redis unreachable" in down.stderr
    assert traind("health", "--worker", "local", *common).returncode == 1
    sup = traind("health", "--supervisor", *common)
    assert sup.returncode == 1 and "no pass" in sup.stderr

    client = Client(redis_url=redis_url, storage=storage_dir)
    failing = client.submit({**slow_spec(name="will-fail"), "model": {"builder": "tests.models:raising_builder"}})
    w = procs.worker(redis_url, storage_dir, "--worker-id", "ops-w")
    s = procs.supervisor(redis_url, storage_dir)
    try:
        wait_for(lambda: traind("health", "--worker", "local", *common).returncode == 0, 120, "worker health")
        wait_for(lambda: traind("health", "--supervisor", *common).returncode == 0, 120, "supervisor health")
        assert traind("health", "--worker", "ops-w", *common).returncode == 0
        assert traind("health", "--worker", "nope", *common).returncode == 1
        st = wait_terminal(client.store, failing.id, timeout=120)
    except AssertionError:
        raise AssertionError(log_of(w) + log_of(s)) from None
    assert st["state"] == "failed"

    ws = json.loads(traind("workers", "--json", *common).stdout)
    assert [x["id"] for x in ws] == ["ops-w"] and ws[0]["rss_mb"] > 0
    table = traind("workers", *common).stdout
    assert "ops-w" in table and "HEARTBEAT" in table

    ok = client.submit(slow_spec(name="ok", epochs=1, batch_delay_s=0.0))
    wait_for(lambda: client.store.raw(ok.id)["state"] == "succeeded", 120, "the ok job")
    refused = traind("retry", ok.id, *common)
    assert refused.returncode == 1 and "only a failed or cancelled job" in refused.stderr
    again = traind("retry", failing.id, *common)
    assert again.returncode == 0 and "attempt 2" in again.stdout
    st = wait_terminal(client.store, failing.id, timeout=120)
    assert st["state"] == "failed" and st["attempt"] == 2  # ran again (and failed again: its builder raises)

    assert (storage_dir / "jobs" / ok.id).exists()
    procs.kill_all()  # nobody may run the queued job below
    keep = client.submit(slow_spec(name="queued"), client_key="keep-me")
    dry = traind("purge", "--older-than", "0s", "--dry-run", *common)
    assert "would remove 2" in dry.stdout
    bad = traind("purge", "--older-than", "0s", "--state", "running", *common)
    assert bad.returncode == 2 and "only finished jobs" in bad.stderr
    assert traind("purge", "--older-than", "30d", *common).stdout.startswith("removed 0")
    gone = traind("purge", "--older-than", "0s", "--state", "succeeded,failed", *common)
    assert gone.returncode == 0 and "removed 2" in gone.stdout
    assert [j["id"] for j in client.list()] == [keep.id]
    assert not (storage_dir / "jobs" / ok.id).exists()
    assert not client.store.r.keys(f"traind:job:{ok.id}*")
    assert client.submit(slow_spec(name="queued"), client_key="keep-me").id == keep.id  # its idempotency key stays


def test_client_fit_tensorboard_maps_or_refuses(redis_url: str, storage_dir: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import keras
    import numpy as np

    from tests.models import load_data

    x, y = load_data(64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    client = Client(redis_url=redis_url, storage=storage_dir)
    with pytest.raises(SpecError, match="histogram_freq=1"):
        client.fit(model, x, y, callbacks=[keras.callbacks.TensorBoard(log_dir="logs", histogram_freq=1)])
    with caplog.at_level("WARNING", logger="traind.client"):
        h = client.fit(model, np.asarray(x), np.asarray(y), callbacks=[keras.callbacks.TensorBoard(log_dir="logs")])
    assert f"jobs/{h.id}/tensorboard" in caplog.text and "'logs'" in caplog.text


