"""The Redis side of :class:`jobs.client.handle.JobSource`: what a :class:`~jobs.client.handle.JobHandle` of the
Redis-backed :class:`jobs.client.Client` reads and does (the HTTP client's is :mod:`jobs.remote.client`).

>>> # Client(...).job_status(job_id, with_history=False)["state"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobs.client.quiet import quiet_tensorflow
from jobs.contract.spec import JobSpec
from jobs.contract.states import JobState
from jobs.ops import lookup

if TYPE_CHECKING:
    from jobs.redis.store import JobStore
    from jobs.settings import ClientSettings
    from jobs.storage.base import Storage


class LocalJobsMixin:
    """Job reads and operations straight on Redis and the storage."""

    store: JobStore
    settings: ClientSettings
    storage: Storage

    def job_status(self, job_id: str, with_history: bool) -> dict[str, Any]:
        return lookup.summary(self.store.get(job_id, with_history=with_history))

    def job_spec(self, job_id: str) -> dict[str, Any]:
        spec = self.store.get(job_id, with_history=False).get("spec")
        return spec if isinstance(spec, dict) else {}

    def job_state(self, job_id: str) -> JobState:
        return JobState(self.store.raw(job_id)["state"])

    def job_history(self, job_id: str) -> list[dict[str, Any]]:
        return self.store.history(job_id)

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return self.store.events(job_id)

    def job_cancel(self, job_id: str) -> JobState:
        return lookup.cancel(self.store, job_id)

    def job_load_model(self, job_id: str, which: str) -> Any:
        quiet_tensorflow()
        from jobs.keras import best_model  # keras: not on the client's import path

        st = self.store.get(job_id, with_history=False, with_goodput=False)
        spec = JobSpec.model_validate(st["spec"])
        return best_model.load_job_model(spec, self.storage, job_id, st, lambda: self.store.checkpoints(job_id),
                                         self.settings.allowed_modules, which)

    def durability_now(self) -> str:
        from jobs.redis.replication import replication_note

        return f"Redis now: {replication_note(self.store.r)}"
