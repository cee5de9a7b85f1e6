"""The job routes of ``traind serve`` as calls: :class:`JobsApi`. Light on purpose (httpx, no numpy, rq or pydantic):
the CLI's read commands over HTTP use it directly, and :class:`jobs.remote.client.RemoteClient` (the
:class:`~jobs.client.handle.JobSource` of its handles) delegates to it.

>>> # api = open_api(); api.job_status(api.resolve("1a2428e0"), with_history=False)["state"]
"""

from __future__ import annotations

from typing import Any

from jobs.contract.states import JobState
from jobs.errors import AmbiguousJobIdError, ConfigError, IllegalTransitionError, JobFinishedError
from jobs.remote.target import resolve_target
from jobs.remote.transport import Transport


class JobsApi:
    """Reads and operations on jobs through ``/api/v1``."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def resolve(self, ref: str) -> str:
        """The full id of a job id or unique prefix (JobNotFoundError, AmbiguousJobIdError)."""
        return str(self.transport.json("GET", f"/api/v1/resolve/{ref}", conflict=_ambiguous(ref))["id"])

    def job_status(self, job_id: str, with_history: bool) -> dict[str, Any]:
        return self.transport.json("GET", f"/api/v1/jobs/{job_id}",
                                   params={"history": "true" if with_history else "false"})

    def job_spec(self, job_id: str) -> dict[str, Any]:
        return self.transport.json("GET", f"/api/v1/jobs/{job_id}/spec")

    def job_state(self, job_id: str) -> JobState:
        return JobState(self.job_status(job_id, False)["state"])

    def job_history(self, job_id: str) -> list[dict[str, Any]]:
        return self.transport.json("GET", f"/api/v1/jobs/{job_id}/history")

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return self.transport.json("GET", f"/api/v1/jobs/{job_id}/events")

    def job_cancel(self, job_id: str) -> JobState:
        """Cancel; the state the job was in (JobFinishedError when it already succeeded or failed)."""
        res = self.transport.json("POST", f"/api/v1/jobs/{job_id}/cancel", idempotent=True,
                                  conflict=JobFinishedError)
        return JobState(res["previous"])

    def job_retry(self, job_id: str) -> int:
        """Run a failed or cancelled job again from its checkpoint; the new attempt number."""
        res = self.transport.json("POST", f"/api/v1/jobs/{job_id}/retry", idempotent=False,
                                  conflict=IllegalTransitionError)
        return int(res["attempt"])

    def list_rows(self, state: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """``{"now_ms", "jobs"}``: the jobs newest first as ``traind list`` shows them (``handle``, ``monitor``)."""
        params: dict[str, Any] = {}
        if state is not None:
            params["state"] = JobState(state).value
        if limit is not None:
            params["limit"] = limit
        return self.transport.json("GET", "/api/v1/cli/list", params=params)

    def workers(self) -> list[dict[str, Any]]:
        return self.transport.json("GET", "/api/v1/workers")

    def drained(self) -> list[dict[str, Any]]:
        """Machines drained as lemons: ``[{"machine", "since_ms", "reason"}]``."""
        return self.transport.json("GET", "/api/v1/workers/drained")


def open_api(timeout_s: float = 30.0, retry_delays_s: tuple[float, ...] | None = None) -> JobsApi:
    """The configured API (:func:`jobs.remote.target.resolve_target`); ConfigError when there is none."""
    target = resolve_target()
    if target is None:
        raise ConfigError("no traind API configured: set TRAIND_API_URL and TRAIND_API_TOKEN (or a context)")
    return JobsApi(Transport(target, timeout_s=timeout_s, retry_delays_s=retry_delays_s))


def _ambiguous(prefix: str) -> Any:
    def make(message: str) -> AmbiguousJobIdError:
        err = AmbiguousJobIdError(prefix, [])
        err.args = (message,)  # the server's message lists the candidates
        return err

    return make
