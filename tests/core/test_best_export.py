"""The user-facing ``best`` model is never exported on the training thread during training: it is the best epoch's
resumable checkpoint (a lazy record, converted and verified by ``load_model``); the files are written at job end."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import redis

from jobs.client import Client
from jobs.errors import CheckpointError
from tests.core.test_training import es_spec, run_worker, run_worker_cancelling
from worker.checkpoint import Checkpoints


def test_best_is_lazy_during_training_and_verified_by_load_model(redis_url: str, r: redis.Redis,
                                                                 storage_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    exports: list[tuple[str, bool]] = []
    orig = Checkpoints.export

    def spy(self: Checkpoints, model: object, weights_only: bool, name: str) -> dict:
        at_job_end = any(f.function == "_finish" for f in inspect.stack())
        exports.append((name, at_job_end))
        return orig(self, model, weights_only, name)

    monkeypatch.setattr(Checkpoints, "export", spy)
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit(es_spec(fit={"epochs": 500, "batch_size": 50, "validation_split": 0.3, "shuffle": False,
                                     "seed": 7}, early_stopping=None))

    run_worker_cancelling(job, r, redis_url, storage_dir, after_epoch=3)
    st = job.status()
    assert st["state"] == "cancelled" and st["best_epoch"] >= 1
    assert exports == [], f"exports written during training: {exports}"
    assert not (storage_dir / "jobs" / job.id / "best.weights.h5").exists()

    # The best record names the best epoch's committed resumable checkpoint...
    rec = st["best_checkpoint"]
    index = client.store.checkpoints(job.id)
    manifest = index[rec["key"]]
    assert rec["format"] == "checkpoint" and manifest["epoch"] == st["best_epoch"]
    assert rec["sha256"] == manifest["sha256"] and rec["file"] == manifest["file"]
    # ... which load_model converts: the weights are the checkpoint's, bit for bit.
    with np.load(storage_dir / "jobs" / job.id / manifest["file"], allow_pickle=False) as z:
        expected = [z[n] for n in sorted(z.files) if n.startswith("w")]
    got = job.load_model("best").get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)

    # Verified: a torn checkpoint is refused, never loaded.
    path = storage_dir / "jobs" / job.id / manifest["file"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="sha256"):
        job.load_model("best")


def test_best_file_is_written_at_job_end(redis_url: str, storage_dir: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    exports: list[tuple[str, bool]] = []
    orig = Checkpoints.export

    def spy(self: Checkpoints, model: object, weights_only: bool, name: str) -> dict:
        exports.append((name, any(f.function == "_finish" for f in inspect.stack())))
        return orig(self, model, weights_only, name)

    monkeypatch.setattr(Checkpoints, "export", spy)
    client = Client(redis_url=redis_url, storage=storage_dir)
    # save_best_only=False: a latest export too; ES restores best weights, so best != last epoch in general
    job = client.submit(es_spec(fit={"epochs": 6, "batch_size": 50, "validation_split": 0.3, "shuffle": False,
                                     "seed": 7},
                                checkpoint={"monitor": "val_loss", "save_best_only": False,
                                            "save_weights_only": False}))
    run_worker(redis_url, storage_dir)
    st = job.status()
    assert st["state"] == "succeeded", st.get("error")
    assert sorted(exports) == [("best", True), ("final", True), ("latest", True)]
    assert st["best_checkpoint"]["file"] == "best.keras" and st["latest_checkpoint"]["file"] == "latest.keras"
    manifest = client.store.checkpoints(job.id)[st["best_epoch"] * 10**6]
    with np.load(storage_dir / "jobs" / job.id / manifest["file"], allow_pickle=False) as z:
        expected = [z[n] for n in sorted(z.files) if n.startswith("w")]
    for a, b in zip(job.load_model("best").get_weights(), expected):
        np.testing.assert_array_equal(a, b)
