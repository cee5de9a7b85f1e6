"""The Python client: submit specs (or ``fit`` a Keras model, :mod:`jobs.client.fit`), then watch the job
(:mod:`jobs.client.handle`).

>>> # client = Client(redis_url="redis://localhost:6379/0", storage="/mnt/ckpt")
>>> # job = client.submit("examples/regression.yaml"); job.wait(600); job.history()[-1]["val_loss"]
>>> # Client(api_url="https://traind.example", token=...)   # over `traind serve` instead (jobs.remote.client)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import redis

from jobs.alerts.urls import stored_spec_fields
from jobs.client.fit import FitMixin
from jobs.client.handle import JobHandle
from jobs.client.local_jobs import LocalJobsMixin
from jobs.client.quiet import quiet_tensorflow
from jobs.contract import keys
from jobs.contract.ids import new_job_id
from jobs.contract.owners import check_owner, default_owner
from jobs.contract.spec import JobSpec, load_spec_file, validate_spec
from jobs.contract.states import JobState
from jobs.errors import ConfigError, DurabilityError, SpecError, StalePrimaryError
from jobs.ops import lookup
from jobs.redis.conn import connect
from jobs.redis.delivery import deliver, deliver_many
from jobs.redis.replication import execute_pipeline, policy_of
from jobs.redis.store import JobStore
from jobs.settings import ClientSettings
from jobs.storage.factory import open_storage
from jobs.storage.location import parse_location

# Jobs created, then delivered, per round: until its message is sent a job waits with pending score 0, which a
# supervisor pass takes for a submitter that died and enqueues again. One round of 3,000 jobs left that window open
# for seconds: a pass re-enqueued 2,080 of them and stalled lease expiry for 30 s (bench.scale at 1,000 workers).
SUBMIT_CHUNK = 100


class Client(LocalJobsMixin, FitMixin):
    """Submit and monitor traind jobs.

    With ``api_url`` (or ``TRAIND_API_URL`` and no ``redis_url``/``connection``), the instance is a
    :class:`jobs.remote.client.RemoteClient`: the same API over ``traind serve`` with a token, no Redis or storage.

    >>> # Client(redis_url="redis://:secret@redis:6379/0", storage="/mnt/shared/traind")
    >>> # Client(api_url="https://traind.example", token=os.environ["TRAIND_API_TOKEN"])
    """

    def __new__(cls, *args: Any, **kw: Any) -> Client:
        settings = kw.get("settings")
        redis_url = kw.get("redis_url") or (settings.redis_url if settings is not None else None)
        if cls is Client and not args and redis_url is None and kw.get("connection") is None:
            from jobs.remote.target import resolve_target

            storage = kw.get("storage")
            if resolve_target(kw.get("api_url"), kw.get("token"), redis_url=None,
                              storage=None if storage is None else str(storage)) is not None:
                assert Client.remote_class is not None  # set by jobs/client/__init__.py, which runs first
                return super().__new__(Client.remote_class())
        return super().__new__(cls)

    # jobs.client (the package) sets it: the remote client subclasses this one, so this module cannot import it
    remote_class: ClassVar[Callable[[], type[Client]] | None] = None

    def __init__(
        self,
        redis_url: str | None = None,
        storage: str | os.PathLike[str] | None = None,
        settings: ClientSettings | None = None,
        connection: redis.Redis | None = None,
        owner: str | None = None,
        *,
        api_url: str | None = None,
        token: str | None = None,
    ) -> None:
        if api_url is not None or token is not None:
            raise ConfigError("Client: api_url/token and redis_url/connection exclude each other (an API client "
                              "reaches Redis only through the server)")
        overrides: dict[str, Any] = {}
        if owner is not None:
            overrides["owner"] = check_owner(owner)
        if redis_url is not None:
            overrides["redis_url"] = redis_url
        if storage is not None:
            overrides["storage_dir"] = parse_location(storage)[1]  # refused here if relative or unsupported
        base = settings or ClientSettings()
        self.settings = base.model_copy(update=overrides) if overrides else base
        self.r = connection or connect(self.settings.effective_redis_url(), settings=self.settings)
        self.store = JobStore(self.r, events_max=self.settings.events_max, max_history=self.settings.max_history)
        # Nothing shared but Redis and the storage location: a laptop with s3:// needs no filesystem in common.
        self.storage = open_storage(self.settings.storage_dir, retry_s=self.settings.storage_retry_s)

    @property
    def owner(self) -> str:
        """The owner recorded on jobs this client submits: ``owner=``, ``TRAIND_OWNER``, else the OS user."""
        return self.settings.owner or default_owner()

    def _validate(self, spec: JobSpec | dict[str, Any] | str | os.PathLike[str]) -> JobSpec:
        limits = dict(
            allowed_modules=self.settings.allowed_modules,
            max_epochs=self.settings.max_epochs,
            max_spec_bytes=self.settings.max_spec_bytes,
            check_notify=True,
        )
        if isinstance(spec, JobSpec):
            return validate_spec(spec.model_dump(mode="json"), **limits)
        if isinstance(spec, dict):
            return validate_spec(spec, **limits)
        return load_spec_file(spec, **limits)

    def submit(
        self, spec: JobSpec | dict[str, Any] | str | os.PathLike[str], client_key: str | None = None,
        owner: str | None = None,
    ) -> JobHandle:
        """Validate (refusing every problem at once), record and enqueue a job.

        A model given as an inline Keras ``config`` is rebuilt here in safe mode, as a worker will rebuild it, and the
        ``monitor`` fields are checked against the metrics it logs (this loads TensorFlow; other specs do not).
        With ``client_key``, resubmitting (say after a network error) returns the first job instead of a copy.
        ``owner`` overrides the client's (:attr:`owner`) for this job.
        """
        job_spec = self._validate(spec)
        _check_client_key(client_key)  # before the (slower) model check
        if owner is not None:
            check_owner(owner)
        self._check_inline_model(job_spec)
        return self._submit(job_spec, client_key, owner)

    def _submit(self, job_spec: JobSpec, client_key: str | None, owner: str | None = None) -> JobHandle:
        """Record and enqueue a validated (and checked) spec."""
        _check_client_key(client_key)
        who = check_owner(owner) if owner is not None else self.owner
        job_id, created = self._create(job_spec, client_key, who)  # returns once replicated (or DurabilityError)
        durability = policy_of(self.r).last
        if created:
            self._enqueue(job_id, job_spec)
        return JobHandle(self, job_id, durability)

    def submit_many(self, specs: list[JobSpec | dict[str, Any]], owner: str | None = None) -> list[JobHandle]:
        """Submit several jobs with pipelined Redis round trips (validation still names every problem)."""
        who = check_owner(owner) if owner is not None else self.owner
        validated = [self._validate(s) for s in specs]
        for sp in validated:
            self._check_inline_model(sp)
        ids = [new_job_id() for _ in validated]
        pairs, handles = list(zip(ids, validated)), list[JobHandle]()
        for lo in range(0, len(pairs), SUBMIT_CHUNK):
            chunk = pairs[lo:lo + SUBMIT_CHUNK]
            pipe = self.r.pipeline(transaction=False)
            for jid, sp in chunk:
                self.store.create(jid, self._fields(sp, jid, who), pipeline=pipe)
            execute_pipeline(self.r, pipe, f"{len(chunk)} jobs: create")
            durability = policy_of(self.r).last
            deliver_many(self.store, [(jid, 1, _queue_name(sp)) for jid, sp in chunk])
            handles += [JobHandle(self, jid, durability) for jid, _ in chunk]
        return handles

    def _check_inline_model(self, spec: JobSpec) -> None:
        """Refuse an inline ``model.config`` a worker could not rebuild, or whose monitors it would never log."""
        if spec.model.config is None:
            return  # keras stays unloaded: builder specs are checked statically (see fitcheck.check_inline_model)
        from jobs.keras import fitcheck
        quiet_tensorflow()
        fitcheck.check_inline_model(spec, self.storage, self.settings.allowed_modules,
                                    max_params=self.settings.max_model_params)

    def _fields(self, spec: JobSpec, job_id: str, owner: str) -> dict[str, Any]:
        return {
            "id": job_id,
            "name": spec.name,
            "owner": owner,
            **stored_spec_fields(spec.model_dump(mode="json")),  # notify URLs masked; kept aside for the supervisor
            "queue": _queue_name(spec),
            "attempt": 1,
            "restarts": 0,
            "preemptions": 0,
            "max_restarts": spec.max_restarts,
            "epoch": 0,
            "epochs": spec.fit.epochs,
            "resume_from": spec.resume_policy,  # auto resolved: what a lost attempt resumes from
            "device": spec.resources.device,
        }

    def _create(self, spec: JobSpec, client_key: str | None, owner: str) -> tuple[str, bool]:
        job_id = new_job_id()
        try:
            return self.store.create(job_id, self._fields(spec, job_id, owner), client_key)
        except StalePrimaryError:
            raise  # not recorded where it counts: nothing will run
        except DurabilityError as e:
            # Recorded on the primary, not confirmed by a replica: it runs unless a failover loses it. Deliver it
            # like any job, and say exactly that, so that a retry does not create a second copy.
            self._enqueue(job_id, spec)
            key = "the same client_key" if client_key else "a client_key"
            raise DurabilityError(f"{e}. Job {job_id} is queued and will run unless the primary fails first: check "
                                  f"`traind status {job_id}` before submitting again (or resubmit with {key}, which "
                                  "never creates a second copy)") from e

    def _enqueue(self, job_id: str, spec: JobSpec) -> None:
        deliver(self.store, job_id, 1, _queue_name(spec))

    def job(self, job_id: str) -> JobHandle:
        """The job with this id, or with the one id that starts with it (``client.job("019ac3f1")``).

        Raises JobNotFoundError, AmbiguousJobIdError listing the jobs a prefix matches, or InvalidJobIdError.
        """
        return JobHandle(self, lookup.resolve_job_id(self.r, job_id))

    def list(self, state: JobState | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Job summaries, newest first, optionally filtered by state."""
        return self.store.list(state, limit)


def _check_client_key(client_key: str | None) -> None:
    if client_key is not None and not (0 < len(client_key) <= 200):
        raise SpecError([f"client_key: expected 1-200 characters, received {len(client_key)}"])


def _queue_name(spec: JobSpec) -> str:
    r = spec.resources
    return keys.rq_queue_name(r.queue, r.device, r.priority, r.gpus)  # only workers with >= gpus devices pop it
