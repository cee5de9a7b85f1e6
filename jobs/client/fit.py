"""``Client.fit``: train a Keras model remotely, like ``model.fit``; the data and model uploads and the checks that
refuse a job that cannot work before anything is queued.

>>> # job = client.fit(model, x, y, epochs=20, validation_split=0.2, callbacks=[EarlyStopping(patience=3)])
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from jobs.client.handle import JobHandle
from jobs.client.quiet import quiet_tensorflow
from jobs.contract.spec import JobSpec
from jobs.errors import SpecError
from jobs.keras.callbacks_spec import callbacks_to_spec

if TYPE_CHECKING:
    from jobs.settings import ClientSettings
    from jobs.storage.base import Storage


class FitMixin:
    """The fit path of :class:`jobs.client.Client`."""

    settings: ClientSettings
    storage: Storage

    if TYPE_CHECKING:  # the submit path's, in jobs.client.submit
        def _validate(self, spec: dict[str, Any]) -> JobSpec: ...

        def _submit(self, job_spec: JobSpec, client_key: str | None, owner: str | None = None) -> JobHandle: ...

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
        owner: str | None = None,
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
        handle = self._submit(job_spec, client_key, owner)  # checked above, with the data: not rebuilt a second time
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
