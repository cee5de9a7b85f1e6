"""Parity tests: a job trained by a real traind worker against plain ``model.fit`` on the same data and seed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from jobs.client import Client, JobHandle
from jobs.settings import ClientSettings, WorkerSettings
from worker.runner import Worker

ALLOWED = ["examples", "tests.models", "tests.parity.objects"]
SEED = 3


@pytest.fixture()
def client(redis_url: str, storage_dir: Path) -> Client:
    return Client(settings=ClientSettings(redis_url=redis_url, storage_dir=storage_dir, allowed_modules=ALLOWED))


def run_worker(client: Client) -> Worker:
    """An in-process burst worker: trains every queued job, then returns."""
    w = Worker(WorkerSettings(redis_url=client.settings.redis_url, storage_dir=client.settings.storage_dir,
                              allowed_modules=ALLOWED, burst=True, dequeue_timeout_s=0.2))
    w.run()
    return w


def plain_fit(build: Callable[[], keras.Model], *args: Any, **kwargs: Any) -> tuple[dict[str, list[float]], Any]:
    """Plain Keras, same seed, shuffle off."""
    keras.utils.set_random_seed(SEED)
    model = build()
    hist = model.fit(*args, shuffle=False, verbose=0, **kwargs)
    return hist.history, model


def traind_fit(client: Client, build: Callable[[], keras.Model], *args: Any, **kwargs: Any) -> tuple[JobHandle,
                                                                                                    dict[str, Any]]:
    """The same call through client.fit and a real worker; returns the job and its final status."""
    keras.utils.set_random_seed(SEED)
    model = build()
    job = client.fit(model, *args, shuffle=False, seed=SEED, **kwargs)
    run_worker(client)
    st = job.status(with_history=True)
    assert st["state"] == "succeeded", st.get("error")
    return job, st


def assert_same_history(st: dict[str, Any], keras_history: dict[str, list[float]], epochs: list[int],
                        names: tuple[str, ...] = ("loss", "val_loss")) -> None:
    """Same epochs, and every named metric equal to 1e-5 epoch by epoch (None where Keras did not log it)."""
    hist = st["history"]
    assert [h["epoch"] for h in hist] == epochs
    for name in names:
        ours = [h.get(name) for h in hist]
        theirs = keras_history[name]
        ours = [v for v in ours if v is not None]
        assert len(ours) == len(theirs), (name, ours, theirs)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=name)
