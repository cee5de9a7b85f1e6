"""The Python client over HTTP: :class:`RemoteClient`, what ``Client(api_url=..., token=...)`` (or ``Client()`` with
``TRAIND_API_URL`` + ``TRAIND_API_TOKEN`` set and no Redis URL) returns.

The same API as the Redis-backed client (``fit``, ``submit``, ``submit_many``, ``job``, ``list`` and every
:class:`~jobs.client.handle.JobHandle` method) through ``traind serve`` with a bearer token: no Redis or
object-store credentials on the laptop. ``fit`` packs the data and the model with the local client's code
(:class:`jobs.client.fit.FitMixin`) into :class:`jobs.remote.storage.ApiStorage`, which uploads them;
specs are validated here with the server's allowlist and limits (``GET /api/v1/client/config``) and again by the
server, whose 422 lists every problem.

>>> # client = Client(api_url="https://traind.example", token=os.environ["TRAIND_API_TOKEN"])
>>> # job = client.fit(model, x, y, epochs=5); job.wait(600); model = job.load_model()
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from jobs.client.handle import JobHandle
from jobs.client.quiet import quiet_tensorflow
from jobs.client.submit import Client, _check_client_key
from jobs.contract.owners import check_owner
from jobs.contract.spec import JobSpec, load_spec_file, validate_spec
from jobs.contract.states import JobState
from jobs.errors import ConfigError
from jobs.remote.jobs_api import JobsApi
from jobs.remote.storage import ApiStorage
from jobs.remote.target import resolve_target
from jobs.remote.transport import Transport
from jobs.settings import ClientSettings

# The server's limits the client validates with, from GET /api/v1/client/config.
SERVER_LIMITS = ("allowed_modules", "max_epochs", "max_spec_bytes", "max_upload_bytes", "max_model_params")


class RemoteClient(Client):
    """Submit and monitor traind jobs through ``traind serve``.

    >>> # RemoteClient(api_url="http://127.0.0.1:8600", token="...").list(state="running")
    """

    def __init__(self, redis_url: str | None = None, storage: Any = None, settings: ClientSettings | None = None,
                 connection: Any = None, owner: str | None = None, *, api_url: str | None = None,
                 token: str | None = None, timeout_s: float = 60.0,
                 retry_delays_s: tuple[float, ...] | None = None) -> None:
        if redis_url is not None or storage is not None or connection is not None:
            raise ConfigError("Client(api_url=...): redis_url, storage and connection belong to the server; a "
                              "remote client has a URL and a token only")
        target = resolve_target(api_url, token)
        if target is None:
            raise ConfigError("RemoteClient needs api_url (or TRAIND_API_URL) and a token (or TRAIND_API_TOKEN)")
        self.target = target
        self.transport = Transport(target, timeout_s=timeout_s, retry_delays_s=retry_delays_s)
        self.api = JobsApi(self.transport)
        self._base_settings = settings
        self._settings: ClientSettings | None = None
        self._owner = check_owner(owner) if owner is not None else None
        self._storage: ApiStorage | None = None

    def __repr__(self) -> str:
        return f"RemoteClient({self.target.url!r})"

    def close(self) -> None:
        self.transport.close()

    # -- what FitMixin uses ---------------------------------------------------------------------------------------
    @property
    def settings(self) -> ClientSettings:  # type: ignore[override]
        """This process' client settings with the server's allowlist and limits (fetched once)."""
        if self._settings is None:
            conf = self.transport.json("GET", "/api/v1/client/config")
            base = self._base_settings or ClientSettings()
            self._settings = base.model_copy(update={k: conf[k] for k in SERVER_LIMITS if k in conf})
        return self._settings

    @property
    def storage(self) -> ApiStorage:  # type: ignore[override]
        if self._storage is None:
            self._storage = ApiStorage(self.transport, max_bytes=self.settings.max_upload_bytes)
        return self._storage

    @property
    def owner(self) -> str:
        """The owner asked for (``owner=``); "" when none: the server records the token's name. Only an admin token
        may name another owner (the server answers 403 otherwise)."""
        return self._owner or ""

    # -- submitting -------------------------------------------------------------------------------------------------
    def _validate(self, spec: JobSpec | dict[str, Any] | str | os.PathLike[str]) -> JobSpec:
        limits = dict(allowed_modules=self.settings.allowed_modules, max_epochs=self.settings.max_epochs,
                      max_spec_bytes=self.settings.max_spec_bytes)
        if isinstance(spec, JobSpec):
            return validate_spec(spec.model_dump(mode="json"), **limits)
        if isinstance(spec, dict):
            return validate_spec(spec, **limits)
        return load_spec_file(spec, **limits)

    def _check_inline_model(self, spec: JobSpec) -> None:
        """Left to the server, which rebuilds an inline model (and its initial weights) from its storage."""

    def submit(self, spec: JobSpec | dict[str, Any] | str | os.PathLike[str], client_key: str | None = None,
               owner: str | None = None) -> JobHandle:
        """Validate here (every problem at once), then submit through ``POST /api/v1/jobs``, which validates again
        and rebuilds an inline model. Retried after a connection error without a second copy (a client_key)."""
        job_spec = self._validate(spec)
        _check_client_key(client_key)
        return self._submit(job_spec, client_key, owner)

    def _submit(self, job_spec: JobSpec, client_key: str | None, owner: str | None = None) -> JobHandle:
        _check_client_key(client_key)
        body: dict[str, Any] = {"spec": job_spec.model_dump(mode="json"),
                                # a key of our own when none is given: a retried POST returns the first job
                                "client_key": client_key or f"remote-{secrets.token_hex(16)}"}
        who = check_owner(owner) if owner is not None else self._owner
        if who:
            body["owner"] = who
        res = self.transport.json("POST", "/api/v1/jobs", body=body, idempotent=True)
        return JobHandle(self, str(res["id"]), "not known (submitted through the API)")

    def submit_many(self, specs: list[JobSpec | dict[str, Any]], owner: str | None = None) -> list[JobHandle]:
        """Validate every spec first (every problem named), then submit them one request each."""
        validated = [self._validate(s) for s in specs]
        return [self._submit(sp, None, owner) for sp in validated]

    # -- reading ----------------------------------------------------------------------------------------------------
    def job(self, job_id: str) -> JobHandle:
        """The job with this id or the one id that starts with it (JobNotFoundError, AmbiguousJobIdError)."""
        return JobHandle(self, self.api.resolve(job_id))

    def list(self, state: JobState | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Job summaries, newest first, optionally filtered by state (as ``traind list`` shows them)."""
        rows = self.api.list_rows(None if state is None else JobState(state).value, limit)["jobs"]
        return [{k: v for k, v in r.items() if k not in ("handle", "monitor")} for r in rows]

    # -- JobSource (what a JobHandle needs): the API's calls -------------------------------------------------------
    def job_status(self, job_id: str, with_history: bool) -> dict[str, Any]:
        return self.api.job_status(job_id, with_history)

    def job_spec(self, job_id: str) -> dict[str, Any]:
        return self.api.job_spec(job_id)

    def job_state(self, job_id: str) -> JobState:
        return self.api.job_state(job_id)

    def job_history(self, job_id: str) -> list[dict[str, Any]]:
        return self.api.job_history(job_id)

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return self.api.job_events(job_id)

    def job_cancel(self, job_id: str) -> JobState:
        return self.api.job_cancel(job_id)

    def job_retry(self, job_id: str) -> int:
        """Run a failed or cancelled job again from its checkpoint; returns the new attempt number."""
        return self.api.job_retry(job_id)

    def job_load_model(self, job_id: str, which: str) -> Any:
        """Rebuilt here from the spec with the job's files downloaded through the API (or presigned URLs), each
        verified against the sha256 Redis recorded, as the local client does (:mod:`jobs.keras.best_model`)."""
        quiet_tensorflow()
        from jobs.keras import best_model

        st = self.job_status(job_id, False)
        spec = JobSpec.model_validate(self.job_spec(job_id))

        def index() -> dict[int, Any]:
            raw = self.transport.json("GET", f"/api/v1/jobs/{job_id}/checkpoint-index")
            return {int(k): v for k, v in raw.items() if str(k).isdigit()}

        return best_model.load_job_model(spec, self.storage.for_job(job_id), job_id, st, index,
                                         self.settings.allowed_modules, which)

    def durability_now(self) -> str:
        return f"submitted through the traind API at {self.target.url}"
