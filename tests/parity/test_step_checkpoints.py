"""Step checkpoints (``checkpoint.save_freq`` batches / ``every_s``): a worker SIGKILLed at a random batch resumes
on another worker at the next batch of the same epoch, and the job ends with the uninterrupted run's weights."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from jobs.client import Client
from jobs.contract.events import EventKind
from jobs.contract.spec import validate_spec
from tests.conftest import Procs
from tests.fault.helpers import RUN_S, Cluster, assert_same_arrays, events_of, final_checkpoint, wait_terminal
from tests.parity.conftest import ALLOWED

pytestmark = pytest.mark.fault

STEPS = 15  # tests.models:load_data: 600 samples, validation_split 0.25, batch 32
EPOCHS = 4
SAVE_FREQ = 4


def spec(name: str, builder: str, kwargs: dict[str, Any], save_freq: int | str) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"builder": builder, "builder_kwargs": kwargs},
        "data": {"loader": "tests.models:load_data"},
        "fit": {"epochs": EPOCHS, "batch_size": 32, "validation_split": 0.25, "seed": 11, "deterministic": True},
        "checkpoint": {"monitor": "val_loss", "save_weights_only": True, "keep_last": 3, "save_freq": save_freq},
        "max_restarts": 2,
    }


def test_sigkill_at_a_random_batch_resumes_at_the_next_batch_with_identical_weights(
        procs: Procs, redis_url: str, storage_dir: Path, tmp_path: Path) -> None:
    rng = random.Random()
    epoch0 = rng.randrange(1, EPOCHS - 1)  # a finished epoch behind the kill, one ahead of it
    batch = rng.randrange(2 * SAVE_FREQ + 2, STEPS)  # 1-based batch whose step kills the worker: 10..14
    print(f"\nkilling at epoch {epoch0 + 1}, batch {batch}")
    c = Cluster(procs, redis_url, storage_dir, env={"TRAIND_ALLOWED_MODULES": ",".join(ALLOWED)})
    c.client = Client(redis_url=redis_url, storage=storage_dir)
    c.client.settings = c.client.settings.model_copy(update={"allowed_modules": ALLOWED})
    c.start("w1", "w2")
    kwargs = {"kill_at_step": epoch0 * STEPS + batch - 1, "marker": str(tmp_path / "killed"), "batch_delay_s": 0.01}
    victim = c.submit(spec("victim", "tests.parity.objects:kill_once_regression", kwargs, SAVE_FREQ))
    base = c.submit(spec("baseline", "tests.parity.objects:kill_once_regression", {**kwargs, "kill_at_step": -1},
                         "epoch"))
    st = wait_terminal(c.store, victim.id, RUN_S * 2)
    baseline = wait_terminal(c.store, base.id, RUN_S * 2)
    assert st["state"] == baseline["state"] == "succeeded", c.logs()
    assert (tmp_path / "killed").exists() and (st["restarts"], st["attempt"]) == (1, 2), c.logs()
    assert baseline["restarts"] == 0
    # The last step checkpoint before the killing batch, or the one before it when the kill came while the newest
    # was still being written in the background (one write in flight: at most two intervals are ever lost).
    saved = (batch - 1) // SAVE_FREQ * SAVE_FREQ
    resumed = events_of(c.store, victim.id, EventKind.RESUMED)
    assert len(resumed) == 1, (resumed, c.logs())
    r = resumed[0]
    assert (r["why"], r["epoch"]) == ("latest", epoch0 + 1) and r["batch"] in (saved, saved - SAVE_FREQ), r
    assert f"continuing at batch {r['batch'] + 1}" in r["msg"], r
    # Same history, epoch by epoch (the resumed epoch's metrics cover all its batches), same final weights.
    assert [h["epoch"] for h in st["history"]] == list(range(1, EPOCHS + 1))
    for mine, ref in zip(st["history"], baseline["history"]):
        for k in ("loss", "val_loss", "mae", "val_mae"):
            assert mine[k] == pytest.approx(ref[k], abs=1e-6), (mine["epoch"], k)
    key, arrays = final_checkpoint(c.store, storage_dir, victim.id)
    ref_key, ref_arrays = final_checkpoint(c.store, storage_dir, base.id)
    assert key == ref_key
    assert_same_arrays(arrays, ref_arrays)  # weights and optimizer slots


def test_step_checkpoint_spec_fields() -> None:
    base = {"name": "s", "model": {"builder": "examples.regression:build_model"},
            "data": {"loader": "examples.regression:load_data"}, "fit": {"epochs": 2}}
    s = validate_spec({**base, "checkpoint": {"save_freq": 100, "every_s": 600}})
    assert (s.checkpoint.save_freq, s.checkpoint.every_s, s.checkpoint.step_checkpoints) == (100, 600, True)
    # Issue 19: time-based step checkpoints are on by default (every_s: auto), off with every_s: null, and a
    # Dataset job may have them (its iterator's position is checkpointed: worker/data_resume.py).
    assert validate_spec(base).checkpoint.step_checkpoints is True
    assert validate_spec({**base, "checkpoint": {"every_s": None}}).checkpoint.step_checkpoints is False
    with pytest.raises(ValueError, match=r"save_freq: expected 'epoch' or a number of batches in 1\.\.1000000000, "
                                         r"received 0"):
        validate_spec({**base, "checkpoint": {"save_freq": 0}})
    dataset_job = validate_spec({**base, "data": {"dataset": "0" * 64}, "checkpoint": {"save_freq": 5}})
    assert dataset_job.checkpoint.save_freq == 5
