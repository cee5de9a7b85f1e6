"""Submit-time checks that need Keras: custom objects named by reference, the model rebuilt in safe mode exactly as a
worker will rebuild it, and ``monitor`` fields checked against the metrics that model and its data will log.

An inline config is measured before it is built (:func:`model_cost`: Keras builds it with its variables left
unallocated), so a 3 KB config describing a 268M-parameter model is refused in milliseconds instead of making the
submitting process (``traind serve`` included) allocate gigabytes.

>>> [p] = monitor_problems({"checkpoint.monitor": "val_los"}, ["loss", "mae"], has_validation=True)
>>> p.endswith("(it logs loss, mae, val_loss, val_mae); did you mean 'val_loss'?")
True
"""

from __future__ import annotations

import copy
import difflib
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.contract.refs import ref_problem
from jobs.errors import SpecError

if TYPE_CHECKING:
    from jobs.contract.spec import JobSpec
    from jobs.storage.base import Storage


def metric_names(train: Iterable[str], has_validation: bool) -> list[str]:
    """The keys Keras' fit logs: the training metrics, and ``val_`` + each with validation data."""
    names = list(dict.fromkeys(train))
    return names + ([f"val_{n}" for n in names] if has_validation else [])


def monitor_problems(monitors: Mapping[str, str], train: Iterable[str], has_validation: bool) -> list[str]:
    """One problem per ``monitor`` that the job will never log, with "did you mean"."""
    train = list(train)
    valid = metric_names(train, has_validation)
    problems: list[str] = []
    for where, mon in monitors.items():
        if mon in valid:
            continue
        if mon.startswith("val_") and not has_validation and mon[4:] in train:
            problems.append(f"{where}: {mon!r} needs validation data, and this job has none; pass validation_data "
                            f"or validation_split, or monitor {mon[4:]!r}")
            continue
        near = difflib.get_close_matches(mon, valid, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        problems.append(f"{where}: {mon!r} is not a metric this job logs (it logs {', '.join(valid)}){hint}")
    return problems


def ref_of(obj: Any, allowed: Sequence[str], what: str) -> tuple[str, str | None]:
    """(``module:name`` of a function/class or the string itself, why it is refused or None)."""
    if isinstance(obj, str):
        return obj, ref_problem(obj, allowed, what)
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module in (None, "__main__", "builtins") or not qual or "<" in qual or "." in qual:
        return "", (f"{what}: {obj!r} is defined in {module or 'no module'} (a notebook, script, lambda or nested "
                    "definition), which a worker cannot import; move it into a module under TRAIND_ALLOWED_MODULES "
                    f"{list(allowed)!r}")
    ref = f"{module}:{qual}"
    return ref, ref_problem(ref, allowed, what)


def custom_object_refs(custom_objects: Mapping[str, Any] | Sequence[Any] | None, allowed: Sequence[str]) -> list[str]:
    """``{"Scale": Scale}`` / ``[Scale]`` / ``["pkg.layers:Scale"]`` -> allowlisted ``module:Name`` references.

    A class defined in a notebook or script (``__main__``) cannot be imported by a worker: refused, saying where to
    put it instead.
    """
    if custom_objects is None:
        return []
    items = list(custom_objects.items()) if isinstance(custom_objects, Mapping) else [(None, o) for o in custom_objects]
    refs: list[str] = []
    problems: list[str] = []
    for key, obj in items:
        what = f"custom_objects[{key!r}]" if key is not None else f"custom_objects[{len(refs) + len(problems)}]"
        ref, p = ref_of(obj, allowed, what)
        if p:
            problems.append(p + " (and decorate it with @keras.saving.register_keras_serializable())")
            continue
        if key is not None and ref.rpartition(":")[2] != key.rpartition(">")[2]:
            problems.append(f"{what}: the name {key!r} differs from the class name in {ref!r}; traind registers "
                            "custom objects under their class name")
            continue
        refs.append(ref)
    if problems:
        raise SpecError(problems)
    return refs


def probe_metrics(model: Any, x1: Any, y1: Any, sw1: Any = None) -> list[str]:
    """The metric names ``model`` logs, from one evaluation step on a sample of the data (metrics reset after)."""
    logs = model.test_on_batch(x1, y1, sample_weight=sw1, return_dict=True)
    model.reset_metrics()
    return list(logs)


# The zero-batch metric probe runs one sample through the model; past these it is skipped (the worker checks the
# monitors when training starts): 50M values of activations (200 MB in float32), ~5e9 multiply-adds (seconds of CPU).
PROBE_MAX_VALUES = 50_000_000
PROBE_MAX_FLOPS = 5_000_000_000


@dataclass(frozen=True)
class ModelCost:
    """What building and probing a model costs, read from its layers before any weight is allocated."""

    params: int  # weights, trainable or not
    values: int  # one sample's layer outputs (activations), inputs included
    flops: int  # rough multiply-adds of one sample: each layer's weights times the positions it slides over

    @property
    def probe_affordable(self) -> bool:
        return self.values <= PROBE_MAX_VALUES and self.flops <= PROBE_MAX_FLOPS


def _size(shape: Sequence[int | None]) -> int:
    return math.prod(d or 1 for d in shape)


def _leaf_layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", ()):
        if getattr(layer, "layers", None):  # a nested model: its own layers
            yield from _leaf_layers(layer)
        else:
            yield layer


def _tensor_shapes(layer: Any, which: str) -> list[tuple[int | None, ...]]:
    import keras

    try:
        return [tuple(t.shape) for t in keras.tree.flatten(getattr(layer, which))]
    except (AttributeError, ValueError):  # never called, or shared (several inbound nodes): no one tensor to read
        return []


def measure(model: Any) -> ModelCost:
    """The :class:`ModelCost` of a built (or stateless-built) Keras model, from its variables' and tensors' shapes."""
    params = sum(_size(tuple(w.shape)) for w in model.weights)
    values = flops = 0
    for layer in _leaf_layers(model):
        outs, ins = _tensor_shapes(layer, "output"), _tensor_shapes(layer, "input")
        values += sum(_size(s[1:]) for s in outs)
        positions = max([_size(s[1:-1]) for s in outs + ins] or [1])
        flops += sum(_size(tuple(w.shape)) for w in layer.weights) * positions
    return ModelCost(params, values, flops)


def model_cost(config: Mapping[str, Any], objs: Mapping[str, Any]) -> ModelCost | None:
    """The cost of the model an inline config describes, built in a Keras ``StatelessScope`` that leaves every
    variable unallocated (milliseconds for a 1 GB model); None when Keras refuses the config (the real rebuild then
    reports why, with its own message). ``objs``: the custom objects the spec declares. A layer that creates a
    variable with concrete values while it is built cannot be measured: SpecError (building it would be unbounded).
    """
    import keras
    from keras.src.backend.common import global_state  # the deferred variables' registry (no public API)

    config = copy.deepcopy(dict(config))
    config.pop("compile_config", None)  # an optimizer creates concrete variables: not here
    pending = list(global_state.get_global_attribute("uninitialized_variables") or [])
    try:
        with keras.StatelessScope(initialize_variables=False), keras.saving.custom_object_scope(dict(objs)):
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
            return measure(model)
    except ValueError as e:
        if "stateless scope" in str(e):  # a layer that creates a concrete variable while it is built
            raise SpecError(["model.config: a layer of this model needs concrete values to be built, so its size "
                             "cannot be measured before building it; give a model.builder (built by the workers "
                             f"only) ({str(e).splitlines()[0][:200]})"]) from e
        return None
    except Exception:  # a config Keras refuses: the real rebuild says why
        return None
    finally:
        # the variables this build deferred are forgotten, never initialized (that would allocate them after all)
        global_state.set_global_attribute("uninitialized_variables", pending)


def check_model_size(spec: JobSpec, objs: Mapping[str, Any], max_params: int) -> ModelCost | None:
    """Refuse (SpecError) an inline config with more than ``max_params`` weights before anything is allocated."""
    assert spec.model.config is not None
    cost = model_cost(spec.model.config, objs)
    if cost is not None and cost.params > max_params:
        raise SpecError([f"model.config: {cost.params:,} parameters exceeds TRAIND_MAX_MODEL_PARAMS={max_params} "
                         "(counted before building: checking an inline config builds the model in the submitting "
                         "process); raise the limit, or give a model.builder, which is built by the workers only"])
    return cost


# Rebuilding empties Keras' process-wide registry of custom objects for a moment: one rebuild at a time per process
# (`traind serve` submits from several threads).
_REBUILD_LOCK = threading.Lock()


def rebuild_model(spec: JobSpec, storage: Storage, allowed: Sequence[str], max_upload_bytes: int | None = None,
                  with_weights: bool = True, max_params: int | None = None) -> Any:
    """The compiled model rebuilt from ``spec`` in safe mode exactly as a fresh worker will rebuild it, or SpecError.

    A fresh worker knows only the custom objects the spec declares, so the ones this process registered (a class
    decorated with ``register_keras_serializable`` in the notebook) are hidden for the rebuild. ``with_weights=False``
    skips loading ``model.initial_weights`` (a structural check that needs no access to the uploaded arrays).
    With ``max_params``, an inline config over it is refused before it is built (:func:`check_model_size`).
    """
    import re

    import keras

    from jobs.errors import UserCodeError
    from jobs.keras.modelio import build_model, custom_objects

    if not with_weights and spec.model.initial_weights:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"initial_weights": None})})
    with _REBUILD_LOCK:
        registry = keras.saving.get_custom_objects()
        registered = dict(registry)
        registry.clear()
        try:
            if max_params is not None and spec.model.config is not None:
                check_model_size(spec, custom_objects(spec.model.custom_objects, allowed), max_params)
            return build_model(spec, storage, allowed, max_upload_bytes)
        except UserCodeError as e:
            missing = re.search(r"Could not locate (\w+) '([^']+)'", str(e))
            why = f"Keras could not locate {missing[1]} {missing[2]!r}" if missing else str(e)[:400]
            raise SpecError([f"model: a worker could not rebuild this model: {why}; declare custom layers, losses, "
                             "metrics, activations and schedules once with custom_objects={'Name': Class} (from a "
                             "module under TRAIND_ALLOWED_MODULES)"]) from e
        finally:
            registry.clear()
            registry.update(registered)


def _structure(model: Any, single: str, plural: str) -> Any:
    """``model.input``/``model.output``, or from ``inputs``/``outputs`` where Keras only fills those (a Sequential)."""
    try:
        return getattr(model, single)
    except (AttributeError, ValueError):
        many = getattr(model, plural, None)
        return many[0] if many and len(many) == 1 else many


def zero_batch(model: Any) -> tuple[Any, Any] | None:
    """A one-sample ``(x, y)`` batch of zeros shaped from the model's inputs and outputs, for :func:`probe_metrics`
    when the data is not at hand; None when the model has no known input (a Sequential never built).

    Labels are shaped like their output, except where that output's loss is a sparse one (integer class ids,
    without the class axis). A failed evaluation leaves a Keras model unusable, so there is one guess, not several.
    """
    import json

    import keras
    import numpy as np

    inputs, outputs = _structure(model, "input", "inputs"), _structure(model, "output", "outputs")
    if inputs is None or (isinstance(inputs, list) and not inputs) or outputs is None:
        return None
    loss = (model.get_compile_config() or {}).get("loss")
    names = list(getattr(model, "output_names", None) or [])

    def sparse(key: Any, index: int) -> bool:
        lo = loss.get(key) if isinstance(loss, dict) else \
            (loss[index] if index < len(loss) else None) if isinstance(loss, (list, tuple)) else loss
        return "sparse" in json.dumps(lo, default=str).lower()

    def zeros(t: Any, drop_last: bool = False) -> Any:
        shape = [1] + [d or 1 for d in tuple(t.shape)[1:]]
        if drop_last:
            return np.zeros(shape[:-1] if len(shape) > 1 else shape, dtype="int32")
        return np.zeros(shape, dtype=keras.backend.standardize_dtype(t.dtype))

    x = keras.tree.map_structure(zeros, inputs)
    if isinstance(outputs, dict):
        y: Any = {k: zeros(t, sparse(k, i)) for i, (k, t) in enumerate(outputs.items())}
    elif isinstance(outputs, (list, tuple)):
        y = [zeros(t, sparse(names[i] if i < len(names) else i, i)) for i, t in enumerate(outputs)]
    else:
        y = zeros(outputs, sparse(names[0] if names else None, 0))
    return x, y


def metric_names_without_data(model: Any) -> list[str] | None:
    """The metric names ``model`` logs, from one evaluation step on a batch of zeros; None when that batch does not
    fit (labels laid out otherwise than :func:`zero_batch` guesses), or when one sample would cost more than
    :data:`PROBE_MAX_VALUES`/:data:`PROBE_MAX_FLOPS`: then the worker checks the monitors when training starts."""
    if not measure(model).probe_affordable:
        return None
    batch = zero_batch(model)
    if batch is None:
        return None
    try:
        # Eager: one step on a throwaway model; tracing it would cost more (and TensorFlow warns about retracing
        # when a long-lived process such as `traind serve` probes many models).
        model.jit_compile = False
        model.run_eagerly = True
        names = probe_metrics(model, *batch)
    except Exception:  # unknowable without the data: the caller skips the check rather than refuse a good job
        return None
    return names if "loss" in names else None


def check_monitors(spec: JobSpec, train_metrics: Iterable[str]) -> None:
    """Raise SpecError naming every ``monitor`` field the job will never log (with "did you mean")."""
    from jobs.contract.spec import monitors

    d = spec.data
    # A loader may or may not return validation data (None): val_* names are then allowed, typos still caught.
    has_val = bool(d.has_validation is None or d.has_validation or spec.fit.validation_split > 0)
    problems = monitor_problems(monitors(spec), train_metrics, has_val)
    if problems:
        raise SpecError(problems)


def check_inline_model(spec: JobSpec, storage: Storage, allowed: Sequence[str], max_params: int | None = None) -> None:
    """The submit-time check of a spec whose model is an inline Keras ``config``: measured (refused over
    ``max_params`` weights before anything is allocated), rebuilt in safe mode as a worker will, and its ``monitor``
    fields checked against the metrics it logs. Raises SpecError; nothing is queued.

    A ``builder`` spec is not rebuilt here: that would run the user's model code in the submitting process (a
    notebook, the CLI, or the ``traind serve`` API with its credentials), which may be slow or need the workers'
    environment; the allowlist check at validation is what guarantees a worker can import it. The initial weights
    are not loaded either: the submitting side may not see the storage, and the check is about the architecture.
    """
    if spec.model.config is None:
        return
    model = rebuild_model(spec, storage, allowed, with_weights=False, max_params=max_params)
    names = metric_names_without_data(model)
    if names is not None:  # otherwise only the data tells the metric names: unchecked until the worker has it
        check_monitors(spec, names)
