"""A submitted job, as the client sees it: status, history, events, wait, cancel, and its trained model.

The handle works over any client that implements :class:`JobSource`: the Redis-backed
:class:`jobs.client.Client` (:mod:`jobs.client.local_jobs`) and the HTTP one (:mod:`jobs.remote.client`).

>>> # job = client.job("019ac3f1"); job.wait(600); model = job.load_model()
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from jobs.contract.states import JobState
from jobs.errors import JobTimeoutError


class JobSource(Protocol):
    """What a handle needs of its client (a protocol: the handle module imports neither client)."""

    def job_status(self, job_id: str, with_history: bool) -> dict[str, Any]: ...

    def job_spec(self, job_id: str) -> dict[str, Any]: ...

    def job_state(self, job_id: str) -> JobState: ...

    def job_history(self, job_id: str) -> list[dict[str, Any]]: ...

    def job_events(self, job_id: str) -> list[dict[str, Any]]: ...

    def job_cancel(self, job_id: str) -> JobState: ...

    def job_load_model(self, job_id: str, which: str) -> Any: ...

    def durability_now(self) -> str: ...


class JobHandle:
    """A submitted job. Every read goes to Redis (or the API); nothing is cached."""

    def __init__(self, client: JobSource, job_id: str, durability: str = "") -> None:
        self.client = client
        self.id = job_id
        self._durability = durability

    @property
    def durability(self) -> str:
        """How the job's creation was made durable: "replicated (n)", "degraded: <why>" (not on a replica: a Redis
        failover could lose it), "not waited" (TRAIND_REDIS_MIN_REPLICAS=0); for a job looked up by id
        (:meth:`Client.job`), which this handle did not create, what Redis replicates now."""
        if not self._durability:
            self._durability = f"not known (looked up, not submitted here); {self.client.durability_now()}"
        return self._durability

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def status(self, with_history: bool = False) -> dict[str, Any]:
        """The job's summary, as ``traind status --json`` prints it: state, epoch (finished epochs), epochs,
        running_epoch/batch/steps (progress of the epoch in training), restarts, best_epoch, best_value, monitor,
        metrics, worker, error, times; ``history`` too with ``with_history``. The spec is :meth:`spec`.

        >>> # job.status()["state"], job.status()["best_value"]
        """
        return self.client.job_status(self.id, with_history)

    def spec(self) -> dict[str, Any]:
        """The job's validated spec as submitted (with the model's Keras config when it came from ``fit``)."""
        return self.client.job_spec(self.id)

    @property
    def state(self) -> JobState:
        return self.client.job_state(self.id)

    def history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch: ``{"epoch": 1, "loss": ..., "val_loss": ..., "lr": ...}``."""
        return self.client.job_history(self.id)

    def events(self) -> list[dict[str, Any]]:
        return self.client.job_events(self.id)

    def wait(self, timeout: float | None = None, poll_s: float = 0.2) -> dict[str, Any]:
        """Block until the job reaches a terminal state; return its status (with history). Raises JobTimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()  # the history only once, at the end: polled over HTTP it would be re-sent each time
            if JobState(st["state"]).is_terminal:
                return self.status(with_history=True)
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeoutError(f"job {self.id} still {st['state']} after {timeout} s (epoch {st['epoch']})")
            time.sleep(poll_s)

    def cancel(self) -> JobState:
        """Cancel, as ``traind cancel`` does; returns the state the job was in. A running job stops at its next
        batch boundary and keeps its checkpoints; cancelling a cancelled job again is a no-op.
        Raises JobFinishedError when the job already succeeded or failed.
        """
        return self.client.job_cancel(self.id)

    def load_model(self, which: str = "best") -> Any:
        """The model from the job's ``best`` checkpoint (default) or its ``final`` one (after training, with
        EarlyStopping's restore_best_weights applied), verified against its sha256 (:mod:`jobs.keras.best_model`)."""
        return self.client.job_load_model(self.id, which)
