"""Real training through traind against real Redis and real TensorFlow (in-process burst workers)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import redis

from examples.regression import build_model, load_data
from jobs.client import Client, JobHandle
from jobs.contract import keys
from jobs.settings import WorkerSettings
from jobs.storage.base import sha256_file
from tests.conftest import wait_for
from worker.runner import Worker

LOADER = {"n": 600, "noise": 0.3, "seed": 0}
BUILDER = {"units": 8, "learning_rate": 0.05}
SEED = 7


def es_spec(**over: object) -> dict:
    spec = {
        "name": "es",
        "model": {"builder": "examples.regression:build_model", "builder_kwargs": BUILDER},
        "data": {"loader": "examples.regression:load_data", "loader_kwargs": LOADER},
        "fit": {"epochs": 60, "batch_size": 50, "validation_split": 0.3, "shuffle": False, "seed": SEED},
        "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True},
        "early_stopping": {"monitor": "val_loss", "patience": 3, "restore_best_weights": True},
    }
    spec.update(over)
    return spec


class Beside(threading.Thread):
    """Runs ``fn`` next to an in-process burst worker. If ``fn`` raises, ``on_error`` makes the worker return
    (say, by cancelling its job) and :meth:`check` re-raises, so a failure is reported at once, not as a timeout."""

    def __init__(self, fn: Callable[[], None], on_error: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn, self.on_error = fn, on_error
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as e:  # re-raised in the test's thread by check()
            self.error = e
            self.on_error()

    def check(self) -> None:
        self.join(60)
        assert not self.is_alive(), "the helper thread is still running"
        if self.error is not None:
            raise self.error


def run_worker(url: str, storage: Path, **kw: object) -> Worker:
    w = Worker(WorkerSettings(redis_url=url, storage_dir=storage, burst=True, dequeue_timeout_s=0.2, **kw))
    w.run()
    return w


def run_worker_cancelling(job: JobHandle, r: redis.Redis, url: str, storage: Path, after_epoch: int) -> None:
    """Run an in-process burst worker on ``job`` and cancel the job once ``after_epoch`` epochs are recorded."""

    def cancel_after() -> None:
        wait_for(lambda: int(r.hget(keys.job(job.id), "epoch") or 0) >= after_epoch, 120, f"epoch {after_epoch}")
        job.cancel()

    t = Beside(cancel_after, on_error=job.cancel)
    run_worker(url, storage)
    t.check()


def plain_keras_fit() -> tuple[keras.callbacks.History, keras.Model, keras.callbacks.EarlyStopping]:
    """The notebook workflow, in-process, with Keras' own callbacks."""
    keras.utils.set_random_seed(SEED)
    model = build_model(**BUILDER)
    x, t = load_data(**LOADER)
    es = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    hist = model.fit(x, t, epochs=60, batch_size=50, validation_split=0.3, shuffle=False, verbose=0, callbacks=[es])
    return hist, model, es


def test_spec_job_trains_with_keras_semantics(redis_url: str, r: redis.Redis, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(es_spec())
    run_worker(redis_url, storage_dir)
    st = job.status(with_history=True)
    assert st["state"] == "succeeded", st.get("error")

    hist, plain_model, es = plain_keras_fit()
    keras_epochs = len(hist.history["loss"])
    assert keras_epochs < 60, "the example must really stop early"
    # early stopping stops at the same epoch as Keras, and the job says so
    assert st["stopped_early"] is True and st["epoch"] == keras_epochs
    assert st["best_epoch"] == es.best_epoch + 1
    # history in Redis matches Keras' own History, epoch by epoch
    assert [h["epoch"] for h in st["history"]] == list(range(1, keras_epochs + 1))
    for name in ("loss", "val_loss", "mae", "val_mae"):
        np.testing.assert_allclose([h[name] for h in st["history"]], hist.history[name], rtol=1e-4, atol=1e-6)
    # restore_best_weights honoured: the final model carries the best epoch's weights, same as Keras'
    final = job.load_model("final")
    for a, b in zip(final.get_weights(), plain_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    best = job.load_model("best")
    for a, b in zip(best.get_weights(), final.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)
    # per-epoch checkpoints exist, verify and load; retention keeps the last 2 plus the best
    index = client.store.checkpoints(job.id)
    epochs = sorted(m["epoch"] for m in index.values())
    assert st["best_epoch"] in epochs and st["epoch"] in epochs and len(epochs) <= 3
    for m in index.values():
        path = storage_dir / "jobs" / job.id / m["file"]
        assert sha256_file(path) == m["sha256"]
        with np.load(path, allow_pickle=False) as z:
            assert len(z.files) > 0
    events = job.events()
    improved = [e["epoch"] for e in events if e["kind"] == "epoch" and e["improved"]]
    assert improved and improved[-1] == st["best_epoch"] and st["best_checkpoint"]["file"] == "best.weights.h5"
    assert [e["epoch"] for e in events if e["kind"] == "early_stop"] == [keras_epochs]


def test_client_fit_mirrors_model_fit(redis_url: str, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    keras.utils.set_random_seed(1)
    model = build_model(**BUILDER)
    x, t = load_data(**LOADER)
    job = client.fit(
        model, x, t, epochs=4, batch_size=100, validation_split=0.3,
        callbacks=[keras.callbacks.ModelCheckpoint("m.keras", monitor="val_loss", save_best_only=True),
                   keras.callbacks.EarlyStopping(monitor="val_loss", patience=2)],
    )
    spec = job.spec()
    assert spec["model"]["config"] and spec["model"]["initial_weights"] and spec["data"]["arrays"]
    assert spec["early_stopping"]["patience"] == 2 and spec["checkpoint"]["save_weights_only"] is False
    run_worker(redis_url, storage_dir)
    st = job.wait(timeout=5)
    assert st["state"] == "succeeded", st.get("error")
    assert len(st["history"]) == st["epoch"] == 4
    trained = job.load_model()  # a full .keras model, loaded in safe mode
    assert isinstance(trained, keras.Model)
    assert trained.predict(x[:3], verbose=0).shape == (3, 1)


def test_builder_that_raises_fails_once_with_traceback(redis_url: str, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    bad = client.submit(es_spec(model={"builder": "examples.regression:build_model",
                                       "builder_kwargs": {"optimizer": "adam", "nonsense": 1}}))
    good = client.submit(es_spec(fit={"epochs": 2, "batch_size": 50, "validation_split": 0.3}))
    run_worker(redis_url, storage_dir)
    st = bad.status()
    assert st["state"] == "failed" and st["attempt"] == 1 and st["restarts"] == 0
    assert "unexpected keyword argument 'nonsense'" in st["error"]
    assert "Traceback" in st["traceback"] and "build_model" in st["traceback"]
    assert good.status()["state"] == "succeeded"  # the worker kept serving


def test_cancel_running_job_keeps_checkpoints(redis_url: str, r: redis.Redis, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(es_spec(early_stopping=None, fit={"epochs": 500, "batch_size": 20, "validation_split": 0.3}))

    run_worker_cancelling(job, r, redis_url, storage_dir, after_epoch=2)
    st = job.status()
    assert st["state"] == "cancelled" and 2 <= st["epoch"] < 500
    index = client.store.checkpoints(job.id)
    assert index and all((storage_dir / "jobs" / job.id / m["file"]).exists() for m in index.values())
    assert [e["state"] for e in job.events() if e["kind"] == "cancelled"] == ["cancelled"]


def test_priority_high_runs_first(redis_url: str, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    small = {"fit": {"epochs": 1, "batch_size": 100, "validation_split": 0.3}, "early_stopping": None}
    low = client.submit(es_spec(**small, resources={"priority": "low"}))
    high = client.submit(es_spec(**small, resources={"priority": "high"}))
    run_worker(redis_url, storage_dir)
    assert high.status()["started_at"] <= low.status()["started_at"]
    assert low.status()["state"] == high.status()["state"] == "succeeded"


@pytest.mark.parametrize("policy", ["best", "latest"])
def test_resume_after_requeue_is_the_same_run(redis_url: str, r: redis.Redis, storage_dir: Path, policy: str) -> None:
    """A supervisor-style requeue mid-run (worker fenced off) resumes to bit-identical results."""
    from jobs.contract.events import EventKind
    from jobs.redis.delivery import requeue

    client = Client(redis_url=redis_url, storage=storage_dir)
    spec = es_spec(resume_from=policy, fit={"epochs": 60, "batch_size": 50, "validation_split": 0.3, "seed": SEED,
                                           "deterministic": True},
                   lr_on_plateau={"patience": 1, "factor": 0.5})
    ref = client.submit(spec)
    run_worker(redis_url, storage_dir)
    job = client.submit(spec)

    def requeue_at_epoch_5() -> None:
        wait_for(lambda: int(r.hget(keys.job(job.id), "epoch") or 0) >= 5, 120, "epoch 5")
        requeue(client.store, job.id, attempt=1, queue=client.store.raw(job.id)["queue"], kind=EventKind.REQUEUED,
                msg="test: requeued", fields={"restarts": 1})

    t = Beside(requeue_at_epoch_5, on_error=job.cancel)
    run_worker(redis_url, storage_dir, heartbeat_interval_s=0.05)
    t.check()
    run_worker(redis_url, storage_dir)
    a, b = ref.status(with_history=True), job.status(with_history=True)
    assert b["state"] == "succeeded" and b["restarts"] == 1 and b["attempt"] == 2
    assert b["epoch"] == a["epoch"] and b["best_epoch"] == a["best_epoch"]
    assert [h["val_loss"] for h in b["history"]] == [h["val_loss"] for h in a["history"]]
    for x, y in zip(ref.load_model("final").get_weights(), job.load_model("final").get_weights()):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    assert [e["why"] for e in job.events() if e["kind"] == "resumed"] == [policy]


def test_load_model_falls_back_to_the_checkpoint_when_the_export_is_torn(redis_url: str, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(es_spec(fit={"epochs": 3, "batch_size": 50, "validation_split": 0.3}, early_stopping=None))
    run_worker(redis_url, storage_dir)
    assert job.status()["state"] == "succeeded"
    good = job.load_model().get_weights()
    export = storage_dir / "jobs" / job.id / "best.weights.h5"
    export.write_bytes(export.read_bytes()[:100])  # as if a worker died between the rename and the record
    again = job.load_model().get_weights()
    for a, b in zip(good, again):
        np.testing.assert_array_equal(a, b)
