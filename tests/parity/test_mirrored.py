"""``resources.gpus: 2``: MirroredStrategy on two devices of one worker (here the CPU split into 2 logical devices),
killed with SIGKILL mid-epoch and resumed on another worker from its step checkpoint, ending with the weights of an
uninterrupted 2-device run."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.client import Client
from jobs.contract.events import EventKind
from tests.conftest import Procs
from tests.fault.helpers import RUN_S, Cluster, assert_same_arrays, events_of, final_checkpoint, wait_terminal
from tests.parity.conftest import ALLOWED
from tests.parity.test_step_checkpoints import SAVE_FREQ, STEPS, spec

pytestmark = pytest.mark.fault


def test_two_device_job_killed_and_resumed(procs: Procs, redis_url: str, storage_dir: Path, tmp_path: Path) -> None:
    c = Cluster(procs, redis_url, storage_dir,
                env={"TRAIND_ALLOWED_MODULES": ",".join(ALLOWED), "TRAIND_LOGICAL_CPUS": "2"})
    c.client = Client(redis_url=redis_url, storage=storage_dir)
    c.client.settings = c.client.settings.model_copy(update={"allowed_modules": ALLOWED})
    c.start("w1", "w2")
    epoch0, batch = 1, 11  # killed before batch 11 of epoch 2: the step checkpoint after batch 8 (or 4) resumes it
    kwargs = {"kill_at_step": epoch0 * STEPS + batch - 1, "marker": str(tmp_path / "killed"), "batch_delay_s": 0.0}
    victim_spec = spec("mirrored-victim", "tests.parity.objects:kill_once_regression", kwargs, SAVE_FREQ)
    base_spec = spec("mirrored-baseline", "tests.parity.objects:kill_once_regression", {**kwargs, "kill_at_step": -1},
                     "epoch")
    for s in (victim_spec, base_spec):
        s["resources"] = {"gpus": 2}
        s["fit"]["epochs"] = 3
    victim, base = c.submit(victim_spec), c.submit(base_spec)
    st = wait_terminal(c.store, victim.id, RUN_S * 3)
    baseline = wait_terminal(c.store, base.id, RUN_S * 3)
    assert st["state"] == baseline["state"] == "succeeded", c.logs()
    assert (tmp_path / "killed").exists() and (st["restarts"], st["attempt"]) == (1, 2), c.logs()
    for job in (victim, base):  # each attempt really trained on both logical devices
        notes = [e for e in events_of(c.store, job.id, EventKind.NOTE) if "MirroredStrategy" in e["msg"]]
        assert len(notes) == (2 if job is victim else 1), notes
        assert all(len(e["devices"]) == 2 and e["devices"][1].endswith("CPU:1") for e in notes), notes
    [r] = events_of(c.store, victim.id, EventKind.RESUMED)
    assert (r["epoch"], r["batch"]) in ((2, 8), (2, 4)), r
    for mine, ref in zip(st["history"], baseline["history"], strict=True):
        for k in ("loss", "val_loss"):
            assert mine[k] == pytest.approx(ref[k], abs=1e-5), (mine["epoch"], k)
    key, arrays = final_checkpoint(c.store, storage_dir, victim.id)
    ref_key, ref_arrays = final_checkpoint(c.store, storage_dir, base.id)
    assert key == ref_key
    assert_same_arrays(arrays, ref_arrays, atol=1e-5)
