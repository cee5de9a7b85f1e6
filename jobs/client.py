"""The Python client: submit specs or ``fit`` a Keras model remotely, then watch the job.

>>> # client = Client(redis_url="redis://localhost:6379/0", storage="/mnt/ckpt")
>>> # job = client.submit("examples/regression.yaml"); job.wait(600); job.history()[-1]["val_loss"]
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Any

import redis

from jobs import keys, ops
from jobs.callbacks_spec import callbacks_to_spec
from jobs.errors import (
    DurabilityError,
    JobNotFoundError,
    JobTimeoutError,
    SpecError,
    StalePrimaryError,
    StorageError,
)
from jobs.location import parse_location
from jobs.queue import enqueue
from jobs.redis_conn import connect
from jobs.replication import execute_pipeline, policy_of
from jobs.settings import ClientSettings
from jobs.spec import JobSpec, load_spec_file, validate_spec
from jobs.states import JobState
from jobs.storage import Storage
from jobs.store import JobStore


def quiet_tensorflow() -> None:
    """Hide TensorFlow's start-up INFO banners (CPU features, oneDNN, absl pre-init) in the client's stderr; its
    warnings and errors still show. Must run before TensorFlow loads; a level the user set wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def new_job_id() -> str:
    """Time-ordered, unguessable, path-safe id."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


class JobHandle:
    """A submitted job. Every read goes to Redis; nothing is cached."""

    def __init__(self, client: Client, job_id: str, durability: str = "") -> None:
        self.client = client
        self.id = job_id
        #: How the job's creation was made durable: "replicated (n)", "degraded: <why>" (not on a replica:
        #: a Redis failover could lose it; logged as a warning), "not waited" (TRAIND_REDIS_MIN_REPLICAS=0).
        self.durability = durability

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def status(self, with_history: bool = False) -> dict[str, Any]:
        """The job's summary, as ``traind status --json`` prints it: state, epoch (finished epochs), epochs,
        running_epoch/batch/steps (progress of the epoch in training), restarts, best_epoch, best_value, monitor,
        metrics, worker, error, times; ``history`` too with ``with_history``. The spec is :meth:`spec`.

        >>> # job.status()["state"], job.status()["best_value"]
        """
        return ops.summary(self.client.store.get(self.id, with_history=with_history))

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
        return ops.cancel(self.client.store, self.id)

    def load_model(self, which: str = "best") -> Any:
        """The model from the job's ``best`` checkpoint (default) or its ``final`` one (after training, with
        EarlyStopping's restore_best_weights applied), verified against its sha256."""
        from jobs.errors import CheckpointError

        quiet_tensorflow()
        from jobs.modelio import load_best_model, load_checkpoint_model  # keras: not on the client's import path

        st = self.client.store.get(self.id, with_history=False)
        spec = JobSpec.model_validate(st["spec"])
        allowed = self.client.settings.allowed_modules
        try:
            return load_best_model(spec, self.client.storage, st, allowed, which=which)
        except (CheckpointError, StorageError):
            # The export is missing or does not match its record (a worker died between writing the file and
            # recording it): the per-attempt resumable checkpoint of the same epoch is the fallback.
            key = st.get("best_ckpt_key") if which == "best" else None
            index = self.client.store.checkpoints(self.id)
            manifest = index.get(int(key)) if key not in (None, "") else (index[max(index)] if index else None)
            if manifest is None:
                raise
            return load_checkpoint_model(spec, self.client.storage, self.id, manifest, allowed)


class Client:
    """Submit and monitor traind jobs.

    >>> # Client(redis_url="redis://:secret@redis:6379/0", storage="/mnt/shared/traind")
    """

    def __init__(
        self,
        redis_url: str | None = None,
        storage: str | os.PathLike[str] | None = None,
        settings: ClientSettings | None = None,
        connection: redis.Redis | None = None,
    ) -> None:
        overrides: dict[str, Any] = {}
        if redis_url is not None:
            overrides["redis_url"] = redis_url
        if storage is not None:
            overrides["storage_dir"] = parse_location(storage)[1]  # refused here if relative or unsupported
        base = settings or ClientSettings()
        self.settings = base.model_copy(update=overrides) if overrides else base
        self.r = connection or connect(self.settings.effective_redis_url(), settings=self.settings)
        self.store = JobStore(self.r, events_max=self.settings.events_max, max_history=self.settings.max_history)
        # Nothing shared but Redis and the storage location: a laptop with s3:// needs no filesystem in common.
        self.storage = Storage(self.settings.storage_dir, retry_s=self.settings.storage_retry_s)

    def _validate(self, spec: JobSpec | dict[str, Any] | str | os.PathLike[str]) -> JobSpec:
        limits = dict(
            allowed_modules=self.settings.allowed_modules,
            max_epochs=self.settings.max_epochs,
            max_spec_bytes=self.settings.max_spec_bytes,
        )
        if isinstance(spec, JobSpec):
            return validate_spec(spec.model_dump(mode="json"), **limits)
        if isinstance(spec, dict):
            return validate_spec(spec, **limits)
        return load_spec_file(spec, **limits)

    def submit(
        self, spec: JobSpec | dict[str, Any] | str | os.PathLike[str], client_key: str | None = None
    ) -> JobHandle:
        """Validate (refusing every problem at once), record and enqueue a job.

        With ``client_key``, resubmitting (say after a network error) returns the first job instead of a copy.
        """
        job_spec = self._validate(spec)
        if client_key is not None and not (0 < len(client_key) <= 200):
            raise SpecError([f"client_key: expected 1-200 characters, received {len(client_key)}"])
        job_id, created = self._create(job_spec, client_key)  # returns once replicated (or raises DurabilityError)
        durability = policy_of(self.r).last
        if created:
            self._enqueue(job_id, job_spec)
        return JobHandle(self, job_id, durability)

    def submit_many(self, specs: list[JobSpec | dict[str, Any]]) -> list[JobHandle]:
        """Submit several jobs with pipelined Redis round trips (validation still names every problem)."""
        validated = [self._validate(s) for s in specs]
        ids = [new_job_id() for _ in validated]
        pipe = self.r.pipeline(transaction=False)
        for jid, sp in zip(ids, validated):
            self.store.create(jid, self._fields(sp, jid), pipeline=pipe)
        execute_pipeline(self.r, pipe, f"{len(ids)} jobs: create")
        durability = policy_of(self.r).last
        pipe = self.r.pipeline(transaction=False)
        for jid, sp in zip(ids, validated):
            enqueue(self.r, jid, 1, _queue_name(sp), pipeline=pipe)
        pipe.execute()
        now = self.store.now_ms()
        pipe = self.r.pipeline(transaction=False)
        for jid in ids:
            pipe.zadd(keys.PENDING, {jid: now}, xx=True)
        pipe.execute()
        return [JobHandle(self, j, durability) for j in ids]

    def _fields(self, spec: JobSpec, job_id: str) -> dict[str, Any]:
        return {
            "id": job_id,
            "name": spec.name,
            "spec": spec.model_dump(mode="json"),
            "queue": _queue_name(spec),
            "attempt": 1,
            "restarts": 0,
            "preemptions": 0,
            "max_restarts": spec.max_restarts,
            "epoch": 0,
            "epochs": spec.fit.epochs,
            "resume_from": spec.resume_from,
            "device": spec.resources.device,
        }

    def _create(self, spec: JobSpec, client_key: str | None) -> tuple[str, bool]:
        job_id = new_job_id()
        try:
            return self.store.create(job_id, self._fields(spec, job_id), client_key)
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
        enqueue(self.r, job_id, 1, _queue_name(spec))
        self.store.mark_delivered(job_id)

    def job(self, job_id: str) -> JobHandle:
        """The job with this id, or with the one id that starts with it (``client.job("019ac3f1")``).

        Raises JobNotFoundError, or AmbiguousJobIdError listing the jobs a prefix matches.
        """
        try:
            return JobHandle(self, ops.resolve_job_id(self.r, job_id))
        except StorageError as e:  # a malformed id names no job
            raise JobNotFoundError(str(e)) from e

    def list(self, state: JobState | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Job summaries, newest first, optionally filtered by state."""
        return self.store.list(state, limit)

    def fit(
        self,
        model: Any,
        x: Any,
        y: Any = None,
        *,
        name: str | None = None,
        epochs: int = 1,
        batch_size: int | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        callbacks: list[Any] | None = None,
        seed: int = 0,
        client_key: str | None = None,
        **spec_overrides: Any,
    ) -> JobHandle:
        """Like ``model.fit``, but trained by a traind worker: uploads the arrays and the model (config,
        compile config and current weights; no pickle), and turns Keras ModelCheckpoint / EarlyStopping /
        ReduceLROnPlateau callbacks into the spec's ``checkpoint`` / ``early_stopping`` / ``lr_on_plateau``.

        >>> # job = client.fit(model, x, t, epochs=200, batch_size=100, validation_split=0.3,
        >>> #                  callbacks=[ModelCheckpoint(p, save_best_only=True), EarlyStopping(patience=3)])
        """
        import numpy as np

        quiet_tensorflow()  # the caller's model normally loaded TensorFlow already; this covers the rest
        from jobs.modelio import serialize_model  # keras import only when fitting

        mx = self.settings.max_upload_bytes
        self.storage.ensure()
        arrays = self.storage.put_arrays({"x": np.asarray(x), "y": np.asarray(y)}, max_bytes=mx)
        data: dict[str, Any] = {"arrays": arrays}
        if validation_data is not None:
            if len(validation_data) != 2:
                raise SpecError([f"validation_data: expected (x_val, y_val), received {len(validation_data)} items"])
            xv, yv = validation_data
            data["validation_arrays"] = self.storage.put_arrays(
                {"x": np.asarray(xv), "y": np.asarray(yv)}, max_bytes=mx
            )
        model_section = serialize_model(model, self.storage, max_bytes=mx)
        spec: dict[str, Any] = {
            "name": name or getattr(model, "name", None) or "fit",
            "model": model_section,
            "data": data,
            "fit": {"epochs": epochs, "batch_size": batch_size or 32, "validation_split": validation_split,
                    "shuffle": shuffle, "seed": seed},
        }
        spec.update(callbacks_to_spec(callbacks or []))
        for k, v in spec_overrides.items():
            if isinstance(v, dict) and isinstance(spec.get(k), dict):
                spec[k] = {**spec[k], **v}
            else:
                spec[k] = v
        handle = self.submit(spec, client_key=client_key)
        for cb in callbacks or []:
            if type(cb).__name__ == "TensorBoard":  # mapped, never silently dropped: say where the logs go
                where = self.storage.job_dir(handle.id) / "tensorboard"
                logging.getLogger("traind.client").warning(
                    "TensorBoard(log_dir=%r): job %s writes its TensorBoard logs (every metric and the learning rate "
                    "per epoch, events as text) to %s; view all jobs with: tensorboard --logdir %s",
                    getattr(cb, "log_dir", None), handle.id, where, where.parent.parent)
        return handle


def _queue_name(spec: JobSpec) -> str:
    return keys.rq_queue_name(spec.resources.queue, spec.resources.device, spec.resources.priority)
