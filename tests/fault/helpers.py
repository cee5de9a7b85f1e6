"""Shared pieces of the fault-injection tests: job specs, a process cluster, kill helpers, condition waits and
checks on what a job left in Redis and on disk.

Every wait here is on a condition with a deadline (``wait_for``); nothing sleeps blindly.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jobs.client import Client, JobHandle
from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from jobs.redis.store import JobStore
from tests.conftest import Procs, log_of, wait_for

LEASE_TTL_S = 4.0  # long enough that a heartbeat thread starved on a loaded 2-core box never loses a live lease
HEARTBEAT_S = 0.5  # an eighth of the TTL: eight delayed beats in a row before a live job could be requeued
SUPERVISOR_INTERVAL_S = 0.5
STEPS = 15  # tests.models:load_data's 600 samples, validation_split 0.25 -> 450 training samples, batch 32
FAULT_ENV = {
    "TRAIND_LEASE_TTL_S": str(LEASE_TTL_S),
    "TRAIND_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
    # Frequent mid-epoch progress writes: tests see which batch a job is at, so kills land where intended.
    "TRAIND_PROGRESS_INTERVAL_S": "0.1",
}
WORKER_START_S = 90.0  # a worker pays a TensorFlow import (~5-10 s on 2 busy cores); generous for CI
RUN_S = 120.0  # deadline for a tiny job to finish once it runs


def job_spec(
    name: str,
    epochs: int = 8,
    *,
    deterministic: bool = False,
    resume_from: str = "latest",
    early_stopping: dict[str, Any] | None = None,
    max_restarts: int = 3,
    builder: str = "tests.models:slow_regression",
    builder_kwargs: dict[str, Any] | None = None,
    seed: int = 7,
) -> dict[str, Any]:
    """A tiny regression job: 15 batches per epoch, ~0.5-0.8 s per epoch (the model sleeps 30 ms a batch)."""
    spec: dict[str, Any] = {
        "name": name,
        "model": {"builder": builder,
                  "builder_kwargs": {"batch_delay_s": 0.03, "learning_rate": 0.05, **(builder_kwargs or {})}},
        "data": {"loader": "tests.models:load_data"},
        "fit": {"epochs": epochs, "batch_size": 32, "validation_split": 0.25, "seed": seed,
                "deterministic": deterministic},
        # Weights-only exports: the test builder's model subclass needs no registration to be reloaded.
        "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True, "keep_last": 2},
        "resume_from": resume_from,
        "max_restarts": max_restarts,
    }
    if builder != "tests.models:slow_regression":
        spec["model"]["builder_kwargs"] = dict(builder_kwargs or {})
    if early_stopping is not None:
        spec["early_stopping"] = early_stopping
    return spec


class Cluster:
    """Worker and supervisor subprocesses of one test (named, so a test can kill the one that holds a job)."""

    def __init__(self, procs: Procs, redis_url: str, storage: Path, env: dict[str, str] | None = None) -> None:
        self.procs, self.url, self.storage = procs, redis_url, storage
        self.env = {**FAULT_ENV, **(env or {})}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.supervisors: list[subprocess.Popen[bytes]] = []
        self.client = Client(redis_url=redis_url, storage=storage)
        self.store: JobStore = self.client.store

    def worker(self, worker_id: str) -> subprocess.Popen[bytes]:
        p = self.procs.worker(self.url, self.storage, "--worker-id", worker_id, env=self.env, name=worker_id)
        self.workers[worker_id] = p
        return p

    def start(self, *worker_ids: str, supervisors: int = 1) -> None:
        """Start the named workers and ``supervisors`` supervisors (all at once: their startups overlap)."""
        for wid in worker_ids:
            self.worker(wid)
        for _ in range(supervisors):
            self.supervisor()

    def supervisor(self) -> subprocess.Popen[bytes]:
        p = self.procs.supervisor(self.url, self.storage, "--interval-s", str(SUPERVISOR_INTERVAL_S), env=self.env)
        self.supervisors.append(p)
        return p

    def wait_registered(self, *worker_ids: str, timeout: float = WORKER_START_S) -> None:
        """Until each worker registered itself in Redis (TensorFlow imported, serving its queues)."""
        for wid in worker_ids:
            wait_for(lambda w=wid: self.store.r.exists(f"traind:worker:{w}") or self._died(w), timeout,
                     f"worker {wid} to register")
            assert self.workers[wid].poll() is None, f"worker {wid} exited early:\n{log_of(self.workers[wid])}"

    def _died(self, wid: str) -> bool:
        return self.workers[wid].poll() is not None

    def submit(self, spec: dict[str, Any]) -> JobHandle:
        return self.client.submit(spec)

    def holder(self, job_id: str) -> str:
        """The id of the worker the job record names (the one running it)."""
        w = self.store.get(job_id, with_history=False)["worker"]
        assert w in self.workers, f"job {job_id} names unknown worker {w!r}"
        return str(w)

    def logs(self) -> str:
        parts = [f"--- {wid} ---\n{log_of(p)}" for wid, p in self.workers.items()]
        parts += [f"--- supervisor {i} ---\n{log_of(p)}" for i, p in enumerate(self.supervisors)]
        return "\n".join(parts)


def kill_tree(p: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the process' whole group (each child runs in its own session, so its group is its tree)."""
    os.killpg(p.pid, sig)
    if sig == signal.SIGKILL:
        p.wait(10)


def status(store: JobStore, job_id: str) -> dict[str, Any]:
    return store.get(job_id, with_history=False)


def wait_mid_epoch(store: JobStore, job_id: str, min_epoch: int, timeout: float = RUN_S, min_batch: int = 3,
                   max_batch: int = STEPS - 3, also: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Until the job runs epoch ``min_epoch + 1`` or later with ``min_batch..max_batch`` batches of it done.

    ``epoch`` counts finished epochs; ``running_epoch``/``batch`` are the throttled mid-epoch progress fields, so
    a kill right after this returns lands mid-epoch with at least one finished epoch behind it. ``also`` adds a
    condition on the job's status.
    """

    def cond() -> dict[str, Any] | None:
        st = status(store, job_id)
        if st["state"] != JobState.RUNNING.value:
            return None
        running = int(st.get("running_epoch") or 0)
        if st["epoch"] >= min_epoch and running == st["epoch"] + 1 and min_batch <= st.get("batch", 0) <= max_batch:
            return st if also is None or also(st) else None
        return None

    return wait_for(cond, timeout, f"job {job_id} mid-epoch after epoch {min_epoch}", interval=0.02)  # type: ignore[return-value]


def wait_committed(store: JobStore, job_id: str, epoch: int, timeout: float = 30.0) -> dict[int, dict[str, Any]]:
    """Until the epoch-end checkpoint of ``epoch`` is in the Redis index (it is committed asynchronously)."""
    return wait_for(lambda: (lambda ix: ix if epoch * 10**6 in ix else None)(store.checkpoints(job_id)), timeout,
                    f"checkpoint of epoch {epoch} committed")  # type: ignore[return-value]


def wait_state(store: JobStore, job_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float,
               what: str) -> dict[str, Any]:
    return wait_for(lambda: (lambda st: st if pred(st) else None)(status(store, job_id)), timeout, what,
                    interval=0.02)  # type: ignore[return-value]


def wait_terminal(store: JobStore, job_id: str, timeout: float = RUN_S) -> dict[str, Any]:
    wait_state(store, job_id, lambda st: JobState(st["state"]).is_terminal, timeout, f"job {job_id} to end")
    return store.get(job_id, with_history=True)


def events_of(store: JobStore, job_id: str, kind: EventKind, **fields: Any) -> list[dict[str, Any]]:
    """The job's events of ``kind`` whose fields equal ``fields`` (e.g. ``attempt=2``), oldest first."""
    return [e for e in store.events(job_id)
            if e.get("kind") == EventKind(kind).value and all(e.get(k) == v for k, v in fields.items())]


def assert_history_complete(st: dict[str, Any], epochs: int) -> None:
    """One history entry per epoch 1..epochs, in order (a redone epoch replaced its entry, none is missing)."""
    got = [h["epoch"] for h in st["history"]]
    assert got == list(range(1, epochs + 1)), f"history epochs {got}"


def npz_arrays(storage: Path, job_id: str, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    with np.load(storage / "jobs" / job_id / manifest["file"], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def final_checkpoint(store: JobStore, storage: Path, job_id: str) -> tuple[int, dict[str, np.ndarray]]:
    """(index key, arrays) of the job's newest committed checkpoint: weights, optimizer state, ES best weights."""
    index = store.checkpoints(job_id)
    key = max(index)
    return key, npz_arrays(storage, job_id, index[key])


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a Keras ``.weights.h5`` file, by path (read with h5py: no TensorFlow in the test process)."""
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj)) if isinstance(obj, h5py.Dataset)
                     else None)
    return out


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 1e-6) -> float:
    """Same names, shapes and values within ``atol``; returns the largest difference seen."""
    assert sorted(a) == sorted(b), f"different arrays: {sorted(set(a) ^ set(b))}"
    worst = 0.0
    for k in a:
        assert a[k].shape == b[k].shape, f"{k}: shape {a[k].shape} != {b[k].shape}"
        if a[k].size and np.issubdtype(a[k].dtype, np.number):
            d = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
            worst = max(worst, d)
            assert d <= atol, f"{k}: differs by {d}"
    return worst
