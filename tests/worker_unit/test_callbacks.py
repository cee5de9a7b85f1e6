"""traind's Keras callbacks, one concern each, on the in-memory ledger (no redis-server): stop at a batch boundary,
progress publishing, the epoch record and the checkpoint callback around a real tiny model's fit."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from jobs.contract.spec import JobSpec
from jobs.keras.best_model import BestModel
from jobs.storage.ckpt_format import ckpt_key
from jobs.storage.factory import open_storage
from worker.callbacks import BestTracker, Plateau
from worker.checkpoint import Checkpoints
from worker.checkpointing import CheckpointCallback
from worker.control import Interrupted, JobControl, StopReason
from worker.ledger import MemoryLedger, Progress
from worker.policy import KeepPolicy, SavePolicy
from worker.progress import EpochRecorder, ProgressCallback, StopCallback
from worker.snapshot import Snapshotter


def test_progress_publishes_to_the_ledger_and_listeners_and_a_fenced_write_requests_a_stop() -> None:
    led, control, seen = MemoryLedger(), JobControl(), []
    cb = ProgressCallback(led, control, 0.0, steps=10, batch_offset=3, listeners=[seen.append])
    cb.on_epoch_begin(1)
    cb.on_train_batch_end(0, {"loss": np.float32(0.5)})
    assert seen == [Progress(4, 10, 2, {"loss": 0.5})]
    assert led.fields == {"batch": 4, "steps": 10, "running_epoch": 2, "batch_metrics": {"loss": 0.5}}
    led.lose_lease()
    cb.on_train_batch_end(1, {})
    assert control.reason is StopReason.FENCED and len(seen) == 1


def test_stop_leaves_fit_at_a_batch_boundary_after_its_hook() -> None:
    control, calls = JobControl(), []
    cb = StopCallback(control, lambda e, b: calls.append((e, b)), steps=3)
    cb.on_epoch_begin(0)
    cb.on_train_batch_end(0)
    control.request(StopReason.CANCEL)
    with pytest.raises(Interrupted) as exc:
        cb.on_train_batch_end(1)
    assert exc.value.reason is StopReason.CANCEL and calls == [(0, 2)]
    cb.on_train_batch_end(2)  # the epoch's last batch: the epoch ends (and checkpoints) first
    control.request(StopReason.FENCED)
    cb.on_epoch_begin(1)
    cb.batches_done = 2
    with pytest.raises(Interrupted):  # fencing never waits for the epoch end
        cb.on_train_batch_end(2)


def _spec(**kw: object) -> JobSpec:
    return JobSpec.model_validate({"name": "unit", "model": {"builder": "tests.models:mlp"},
                                   "data": {"loader": "tests.models:load_data"}, "fit": {"epochs": 3}, **kw})


def _fit_with(tmp_path: Path, led: MemoryLedger, control: JobControl, epochs: int = 3
              ) -> tuple[CheckpointCallback, EpochRecorder, Checkpoints]:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    spec = _spec()
    tracker, plateau, best = BestTracker("loss", "auto", None), Plateau(spec), BestModel()
    ckpts = Checkpoints(open_storage(str(tmp_path)), led, KeepPolicy(keep_last=1))
    recorder = EpochRecorder(led, tracker, plateau, best)
    ckpt = CheckpointCallback(ckpts, led, control, SavePolicy(), Snapshotter(tracker, plateau), best, recorder,
                              epochs=epochs, steps=4, mid_epoch_resume=True, export_latest=True)
    try:
        model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False, callbacks=[recorder, ckpt])
    finally:
        ckpts.close()
    return ckpt, recorder, ckpts


def test_each_epoch_is_recorded_then_checkpointed(tmp_path: Path) -> None:
    led = MemoryLedger("job1")
    ckpt, recorder, _ = _fit_with(tmp_path, led, JobControl())
    assert [h["epoch"] for h in led.history()] == [1, 2, 3] and recorder.epochs_done == 3
    assert led.fields["best_epoch"] == 3 and led.fields["best_ckpt_key"] == ckpt_key(3, 0)
    assert sorted(led.checkpoints()) == [ckpt_key(3, 0)]  # keep_last=1, the best is the last
    m = led.checkpoints()[ckpt_key(3, 0)]
    assert m["state"]["tracker"]["best_epoch"] == 3 and m["metrics"]["loss"] == led.history()[-1]["loss"]
    assert [e["kind"] for e in led.events()] == ["epoch", "epoch", "epoch"] and ckpt.preempt_key is None


def test_a_preemption_at_an_epoch_end_commits_the_checkpoint_then_leaves(tmp_path: Path) -> None:
    led, control = MemoryLedger("job1"), JobControl()
    control.request(StopReason.PREEMPT)
    with pytest.raises(Interrupted):
        _fit_with(tmp_path, led, control)
    assert [h["epoch"] for h in led.history()] == [1]
    assert sorted(led.checkpoints()) == [ckpt_key(1, 0)]  # committed before leaving: the requeue points at it
