"""A submitted job, as the client sees it: status, history, events, wait, cancel, and its trained model.

>>> # job = client.job("019ac3f1"); job.wait(600); model = job.load_model()
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from jobs.client.quiet import quiet_tensorflow
from jobs.contract.spec import JobSpec
from jobs.contract.states import JobState
from jobs.errors import JobTimeoutError
from jobs.ops import lookup

if TYPE_CHECKING:
    from jobs.redis.store import JobStore
    from jobs.settings import ClientSettings
    from jobs.storage.base import Storage


class ClientLike(Protocol):
    """What a handle uses of :class:`jobs.client.Client` (a protocol: the handle module never imports the client)."""

    store: JobStore
    settings: ClientSettings
    storage: Storage


class JobHandle:
    """A submitted job. Every read goes to Redis; nothing is cached."""

    def __init__(self, client: ClientLike, job_id: str, durability: str = "") -> None:
        self.client = client
        self.id = job_id
        self._durability = durability

    @property
    def durability(self) -> str:
        """How the job's creation was made durable: "replicated (n)", "degraded: <why>" (not on a replica: a Redis
        failover could lose it), "not waited" (TRAIND_REDIS_MIN_REPLICAS=0); for a job looked up by id
        (:meth:`Client.job`), which this handle did not create, what Redis replicates now."""
        if not self._durability:
            from jobs.redis.replication import replication_note

            now = replication_note(self.client.store.r)
            self._durability = f"not known (looked up, not submitted here); Redis now: {now}"
        return self._durability

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def status(self, with_history: bool = False) -> dict[str, Any]:
        """The job's summary, as ``traind status --json`` prints it: state, epoch (finished epochs), epochs,
        running_epoch/batch/steps (progress of the epoch in training), restarts, best_epoch, best_value, monitor,
        metrics, worker, error, times; ``history`` too with ``with_history``. The spec is :meth:`spec`.

        >>> # job.status()["state"], job.status()["best_value"]
        """
        return lookup.summary(self.client.store.get(self.id, with_history=with_history))

    def spec(self) -> dict[str, Any]:
        """The job's validated spec as submitted (with the model's Keras config when it came from ``fit``)."""
        spec = self.client.store.get(self.id, with_history=False).get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def state(self) -> JobState:
        return JobState(self.client.store.raw(self.id)["state"])

    def history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch: ``{"epoch": 1, "loss": ..., "val_loss": ..., "lr": ...}``."""
        return self.client.store.history(self.id)

    def events(self) -> list[dict[str, Any]]:
        return self.client.store.events(self.id)

    def wait(self, timeout: float | None = None, poll_s: float = 0.2) -> dict[str, Any]:
        """Block until the job reaches a terminal state; return its status. Raises JobTimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(with_history=True)
            if JobState(st["state"]).is_terminal:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeoutError(f"job {self.id} still {st['state']} after {timeout} s (epoch {st['epoch']})")
            time.sleep(poll_s)

    def cancel(self) -> JobState:
        """Cancel, as ``traind cancel`` does; returns the state the job was in. A running job stops at its next
        batch boundary and keeps its checkpoints; cancelling a cancelled job again is a no-op.
        Raises JobFinishedError when the job already succeeded or failed.
        """
        return lookup.cancel(self.client.store, self.id)

    def load_model(self, which: str = "best") -> Any:
        """The model from the job's ``best`` checkpoint (default) or its ``final`` one (after training, with
        EarlyStopping's restore_best_weights applied), verified against its sha256 (:mod:`jobs.keras.best_model`)."""
        quiet_tensorflow()
        from jobs.keras import best_model  # keras: not on the client's import path

        st = self.client.store.get(self.id, with_history=False, with_goodput=False)
        spec = JobSpec.model_validate(st["spec"])
        return best_model.load_job_model(spec, self.client.storage, self.id, st,
                                     lambda: self.client.store.checkpoints(self.id),
                                     self.client.settings.allowed_modules, which)
