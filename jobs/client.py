"""The Python client: submit specs or ``fit`` a Keras model remotely, then watch the job.

>>> # client = Client(redis_url="redis://localhost:6379/0", storage="/mnt/ckpt")
>>> # job = client.submit("examples/regression.yaml"); job.wait(600); job.history()[-1]["val_loss"]
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

import redis

from jobs.contract import keys
from jobs.contract.ids import new_job_id
from jobs.contract.spec import JobSpec, load_spec_file, validate_spec
from jobs.contract.states import JobState
from jobs.errors import (
    DurabilityError,
    JobTimeoutError,
    SpecError,
    StalePrimaryError,
    StorageError,
)
from jobs.keras.callbacks_spec import callbacks_to_spec
from jobs.ops import lookup
from jobs.redis.conn import connect
from jobs.redis.delivery import deliver, deliver_many
from jobs.redis.replication import execute_pipeline, policy_of
from jobs.redis.store import JobStore
from jobs.settings import ClientSettings
from jobs.storage.factory import open_storage
from jobs.storage.location import parse_location


def quiet_tensorflow() -> None:
    """Hide TensorFlow's start-up INFO banners (CPU features, oneDNN, absl pre-init) in the client's stderr; its
    warnings and errors still show. Loads TensorFlow (when it is installed and not loaded yet) with its C++ start-up
    lines routed through :func:`jobs.logfmt.native_stderr_logged`, which TensorFlow 2.21 prints whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says. A level the user set wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" in sys.modules:
        return
    from jobs.logfmt import native_stderr_logged

    with native_stderr_logged(), contextlib.suppress(ImportError):
        import tensorflow  # noqa: F401 - loaded here so that its banners are filtered


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
        EarlyStopping's restore_best_weights applied), verified against its sha256."""
        from jobs.errors import CheckpointError

        quiet_tensorflow()
        from jobs.keras.modelio import load_best_model, load_checkpoint_model  # keras: not on the client's import path

        st = self.client.store.get(self.id, with_history=False)
        spec = JobSpec.model_validate(st["spec"])
        allowed = self.client.settings.allowed_modules
        rec = st.get(f"{which}_checkpoint")
        if isinstance(rec, dict) and rec.get("format") == "checkpoint":
            # The lazy export written during training: the best epoch's resumable checkpoint, converted here.
            manifest = self.client.store.checkpoints(self.id).get(rec.get("key"))  # type: ignore[arg-type]
            if manifest is None or manifest.get("sha256") != rec.get("sha256"):
                raise CheckpointError(f"job {self.id}: the {which} checkpoint {rec.get('file')} is no longer in the "
                                      "checkpoint index (replaced by a newer one); try again")
            return load_checkpoint_model(spec, self.client.storage, self.id, manifest, allowed)
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
        self.storage = open_storage(self.settings.storage_dir, retry_s=self.settings.storage_retry_s)

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

        A model given as an inline Keras ``config`` is rebuilt here in safe mode, as a worker will rebuild it, and the
        ``monitor`` fields are checked against the metrics it logs (this loads TensorFlow; other specs do not).
        With ``client_key``, resubmitting (say after a network error) returns the first job instead of a copy.
        """
        job_spec = self._validate(spec)
        _check_client_key(client_key)  # before the (slower) model check
        self._check_inline_model(job_spec)
        return self._submit(job_spec, client_key)

    def _submit(self, job_spec: JobSpec, client_key: str | None) -> JobHandle:
        """Record and enqueue a validated (and checked) spec."""
        _check_client_key(client_key)
        job_id, created = self._create(job_spec, client_key)  # returns once replicated (or raises DurabilityError)
        durability = policy_of(self.r).last
        if created:
            self._enqueue(job_id, job_spec)
        return JobHandle(self, job_id, durability)

    def submit_many(self, specs: list[JobSpec | dict[str, Any]]) -> list[JobHandle]:
        """Submit several jobs with pipelined Redis round trips (validation still names every problem)."""
        validated = [self._validate(s) for s in specs]
        for sp in validated:
            self._check_inline_model(sp)
        ids = [new_job_id() for _ in validated]
        pipe = self.r.pipeline(transaction=False)
        for jid, sp in zip(ids, validated):
            self.store.create(jid, self._fields(sp, jid), pipeline=pipe)
        execute_pipeline(self.r, pipe, f"{len(ids)} jobs: create")
        durability = policy_of(self.r).last
        deliver_many(self.store, [(jid, 1, _queue_name(sp)) for jid, sp in zip(ids, validated)])
        return [JobHandle(self, j, durability) for j in ids]

    def _check_inline_model(self, spec: JobSpec) -> None:
        """Refuse an inline ``model.config`` a worker could not rebuild, or whose monitors it would never log."""
        if spec.model.config is None:
            return  # keras stays unloaded: builder specs are checked statically (see fitcheck.check_inline_model)
        from jobs.keras import fitcheck
        quiet_tensorflow()
        fitcheck.check_inline_model(spec, self.storage, self.settings.allowed_modules,
                                    max_params=self.settings.max_model_params)

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
        deliver(self.store, job_id, 1, _queue_name(spec))

    def job(self, job_id: str) -> JobHandle:
        """The job with this id, or with the one id that starts with it (``client.job("019ac3f1")``).

        Raises JobNotFoundError, AmbiguousJobIdError listing the jobs a prefix matches, or InvalidJobIdError.
        """
        return JobHandle(self, lookup.resolve_job_id(self.r, job_id))

    def list(self, state: JobState | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Job summaries, newest first, optionally filtered by state."""
        return self.store.list(state, limit)

    def fit(
        self,
        model: Any,
        /,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: list[Any] | None = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        class_weight: dict[int, float] | None = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_batch_size: int | None = None,
        validation_freq: int = 1,
        *,
        name: str | None = None,
        seed: int = 0,
        custom_objects: dict[str, Any] | list[Any] | None = None,
        client_key: str | None = None,
        **spec_sections: Any,
    ) -> JobHandle:
        """Like ``model.fit`` (same arguments, same meaning), but trained by a traind worker.

        Uploads the data (NumPy arrays, dicts/lists of them, or a finite tf.data.Dataset saved with
        ``Dataset.save``) and the model (config, compile config and current weights; no pickle), turns Keras callbacks
        into spec sections, rebuilds the model in safe mode as a worker will and checks every ``monitor`` against
        the metrics it logs, all before anything is queued. Other keyword arguments are spec sections
        (``checkpoint=``, ``resources=``, ``model={"custom_objects": [...]}``, ``fit={"deterministic": True}``...).

        >>> # job = client.fit(model, {"a": xa, "b": xb}, t, epochs=20, batch_size=100, validation_split=0.3,
        >>> #                  sample_weight=w, custom_objects={"Scale": Scale},
        >>> #                  callbacks=[ModelCheckpoint(p, save_best_only=True), EarlyStopping(patience=3)])
        """
        from jobs.keras import fitcheck
        quiet_tensorflow()  # the caller's model normally loaded TensorFlow already; this covers the rest
        from jobs.keras.modelio import serialize_model  # keras import only when fitting

        allowed = self.settings.allowed_modules
        problems = _unsupported_kwargs(spec_sections)
        if verbose not in ("auto", 0, 1, 2):
            problems.append(f"verbose: expected 'auto', 0, 1 or 2, received {verbose!r}")
        if problems:
            raise SpecError(problems)
        mx = self.settings.max_upload_bytes
        self.storage.ensure()
        data = self._upload_data(x, y, sample_weight, validation_data, mx)
        model_section = serialize_model(model, self.storage, max_bytes=mx)
        extra_model = spec_sections.pop("model", None) or {}
        if not isinstance(extra_model, dict):
            raise SpecError([f"model: expected a dict of model spec fields, received {type(extra_model).__name__}"])
        refs = fitcheck.custom_object_refs(custom_objects, allowed)
        refs += fitcheck.custom_object_refs(extra_model.pop("custom_objects", None), allowed)
        model_section.update(extra_model)
        if refs:
            model_section["custom_objects"] = list(dict.fromkeys(refs))
        fit: dict[str, Any] = {
            "epochs": epochs, "batch_size": batch_size or 32, "validation_split": validation_split,
            "shuffle": shuffle, "seed": seed, "initial_epoch": initial_epoch, "validation_freq": validation_freq,
        }
        for k, v in (("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps),
                     ("validation_batch_size", validation_batch_size), ("class_weight", class_weight)):
            if v is not None:
                fit[k] = v
        spec: dict[str, Any] = {
            "name": name or getattr(model, "name", None) or "fit",
            "model": model_section,
            "data": data,
            "fit": fit,
        }
        spec.update(callbacks_to_spec(callbacks or [], allowed))
        for k, v in spec_sections.items():
            if isinstance(v, dict) and isinstance(spec.get(k), dict):
                spec[k] = {**spec[k], **v}
            else:
                spec[k] = v
        job_spec = self._validate(spec)
        self._check_model(job_spec, x, y, sample_weight)
        handle = self._submit(job_spec, client_key)  # checked above, with the data: not rebuilt a second time
        for cb in callbacks or []:
            if type(cb).__name__ == "TensorBoard":  # mapped, never silently dropped: say where the logs go
                where = self.storage.job_dir(handle.id) / "tensorboard"
                logging.getLogger("traind.client").warning(
                    "TensorBoard(log_dir=%r): job %s writes its TensorBoard logs (every metric and the learning rate "
                    "per epoch, events as text) to %s; view all jobs with: tensorboard --logdir %s",
                    getattr(cb, "log_dir", None), handle.id, where, where.parent.parent)
        return handle


    def _upload_data(self, x: Any, y: Any, sample_weight: Any, validation_data: Any, max_bytes: int) -> dict[str, Any]:
        """Store the training (and validation) data; return the spec's ``data`` section."""
        from jobs.keras import datasets, fitdata
        _refuse_python_data(x, "x")
        data: dict[str, Any] = {}
        if datasets.is_dataset(x):
            for arg, v in (("y", y), ("sample_weight", sample_weight)):
                if v is not None:
                    raise SpecError([f"{arg}: must be None when x is a tf.data.Dataset (as in Keras: the Dataset "
                                     f"yields (x, y) or (x, y, sample_weight)), received {type(v).__name__}"])
            data["dataset"] = datasets.save_dataset(x, self.storage, "x", max_bytes)
        else:
            if x is None or y is None:
                raise SpecError(["x, y: expected training data (arrays, dicts/lists of arrays, or a Dataset as x), "
                                 f"received x={type(x).__name__}, y={type(y).__name__}"])
            packed = fitdata.pack({"x": x, "y": y, "sample_weight": sample_weight})
            data["arrays"] = self.storage.put_arrays(packed, max_bytes=max_bytes)
        if validation_data is None:
            return data
        _refuse_python_data(validation_data, "validation_data")
        if datasets.is_dataset(validation_data):
            data["validation_dataset"] = datasets.save_dataset(validation_data, self.storage, "validation_data",
                                                               max_bytes)
        elif isinstance(validation_data, tuple) and len(validation_data) in (2, 3):
            parts = dict(zip(fitdata.PARTS, validation_data))
            data["validation_arrays"] = self.storage.put_arrays(fitdata.pack(parts), max_bytes=max_bytes)
        else:
            shown = f"{len(validation_data)} items" if isinstance(validation_data, (tuple, list)) else \
                type(validation_data).__name__
            raise SpecError([f"validation_data: expected a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight) "
                             f"or a tf.data.Dataset, received {shown}"])
        return data

    def _check_model(self, spec: JobSpec, x: Any, y: Any, sample_weight: Any) -> None:
        """Rebuild the model from the spec in safe mode, as a worker will, and check every monitor against the metrics
        it logs on a sample of the data: a job that cannot work is refused here, before anything is queued."""
        from jobs.keras import datasets, fitcheck, fitdata
        rebuilt = fitcheck.rebuild_model(spec, self.storage, self.settings.allowed_modules,
                                         self.settings.max_upload_bytes)
        try:
            if datasets.is_dataset(x):
                sample = next(iter(x.take(1)))
                x1, y1, sw1 = (tuple(sample) + (None, None))[:3] if isinstance(sample, tuple) else (sample, None, None)
            else:
                n = min(2, fitdata.num_samples(y))
                x1, y1 = fitdata.take(x, slice(0, n)), fitdata.take(y, slice(0, n))
                sw1 = None if sample_weight is None else fitdata.take(sample_weight, slice(0, n))
            names = fitcheck.probe_metrics(rebuilt, x1, y1, sw1)
        except Exception as e:  # the data does not fit the model: Keras' reason, shortened
            raise SpecError([f"data: the model cannot evaluate this data ({type(e).__name__}: {str(e)[:400]})"]) from e
        fitcheck.check_monitors(spec, names)


# Keras fit arguments (Keras 2 and 3) that traind does not take, with the reason.
_KERAS_UNSUPPORTED = {
    "max_queue_size": "traind feeds data with tf.data, not a Python queue",
    "workers": "traind feeds data with tf.data, not Python worker threads",
    "use_multiprocessing": "traind feeds data with tf.data, not Python worker processes",
}


def _unsupported_kwargs(kwargs: dict[str, Any]) -> list[str]:
    import difflib

    sections = [f for f in JobSpec.model_fields if f not in ("name", "data")]
    problems = []
    for k in kwargs:
        if k in _KERAS_UNSUPPORTED:
            problems.append(f"{k}: Keras fit argument not supported by traind: {_KERAS_UNSUPPORTED[k]}")
        elif k not in sections:
            valid = ["x", "y", "batch_size", "epochs", "verbose", "callbacks", "validation_split", "validation_data",
                     "shuffle", "class_weight", "sample_weight", "initial_epoch", "steps_per_epoch",
                     "validation_steps", "validation_batch_size", "validation_freq", "name", "seed",
                     "custom_objects", "client_key", *sections]
            near = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(f"{k}: not a Keras fit argument nor a traind spec section{hint} (expected one of "
                            f"{', '.join(valid)})")
    return problems


def _refuse_python_data(x: Any, what: str) -> None:
    """Generators, iterators and keras.utils.PyDataset hold Python code: they cannot be shipped."""
    import inspect
    from collections.abc import Iterator

    kind = type(x).__name__
    is_pydataset = any(c.__name__ in ("PyDataset", "Sequence") and c.__module__.startswith("keras")
                       for c in type(x).__mro__)
    if inspect.isgenerator(x) or isinstance(x, Iterator) or is_pydataset:
        raise SpecError([
            f"{what}: a {kind} yields batches from Python code, which traind neither pickles nor runs on its workers; "
            "pass NumPy arrays (or dicts/lists of them), a finite tf.data.Dataset built from tensors, or name a "
            "loader module on the workers' allowlist in a spec (data.loader: 'module:function')"])


def _check_client_key(client_key: str | None) -> None:
    if client_key is not None and not (0 < len(client_key) <= 200):
        raise SpecError([f"client_key: expected 1-200 characters, received {len(client_key)}"])


def _queue_name(spec: JobSpec) -> str:
    r = spec.resources
    return keys.rq_queue_name(r.queue, r.device, r.priority, r.gpus)  # only workers with >= gpus devices pop it
