"""Models across the wire without pickle: Keras configs (safe mode), builders from the allowlist, npz weights.

Imports Keras lazily; only call these where TensorFlow is meant to load.

>>> # section = serialize_model(model, storage)   # client side
>>> # model = build_model(spec, storage, ["examples"])   # worker side
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.contract.refs import resolve_ref
from jobs.contract.spec import JobSpec
from jobs.errors import SpecError, UserCodeError
from jobs.storage.base import Storage


def serialize_model(model: Any, storage: Storage, max_bytes: int | None = None) -> dict[str, Any]:
    """The spec's ``model`` section for a compiled in-memory model: config, compile config, current weights."""
    import keras

    if not getattr(model, "compiled", False) and getattr(model, "optimizer", None) is None:
        raise SpecError(["model: expected a compiled keras.Model (call model.compile(...) first)"])
    config = keras.saving.serialize_keras_object(model)
    compile_config = model.get_compile_config()
    if compile_config is None:
        raise SpecError(["model: the model has no compile config; compile it with serializable arguments"])
    section: dict[str, Any] = {"config": config, "compile": compile_config}
    if model.built and model.weights:
        weights = {f"w{i:05d}": np.asarray(v) for i, v in enumerate(model.get_weights())}
        section["initial_weights"] = storage.put_arrays(weights, max_bytes=max_bytes)
    return section


def custom_objects(refs: Sequence[str], allowed: Sequence[str]) -> dict[str, Any]:
    """``{name: object}`` for the declared ``module:Name`` refs, under the class name and, for classes decorated with
    ``register_keras_serializable``, their registered name (``package>Name``) too, which is what configs record."""
    import keras

    out: dict[str, Any] = {}
    for ref in refs:
        obj = resolve_ref(ref, allowed, "model.custom_objects")
        out[ref.split(":", 1)[1]] = obj
        out[keras.saving.get_registered_name(obj)] = obj
    return out


def build_model(spec: JobSpec, storage: Storage, allowed: Sequence[str], max_upload_bytes: int | None = None) -> Any:
    """A compiled keras.Model from the spec (builder call, or safe-mode config + compile config).

    Raises UserCodeError when the user's builder raises (the job fails, no retry).
    """
    import keras

    m = spec.model
    objs = custom_objects(m.custom_objects, allowed)
    if m.builder is not None:
        fn = resolve_ref(m.builder, allowed, "model.builder")
        try:
            with keras.saving.custom_object_scope(objs):
                model = fn(**m.builder_kwargs)
        except Exception as e:
            raise UserCodeError(f"model.builder {m.builder} raised {type(e).__name__}: {e}") from e
        if not isinstance(model, keras.Model):
            raise UserCodeError(f"model.builder {m.builder} returned {type(model).__name__}; expected keras.Model")
        if getattr(model, "optimizer", None) is None:
            raise UserCodeError(f"model.builder {m.builder} returned an uncompiled model; call model.compile(...)")
    else:
        try:
            # safe_mode=True refuses Lambda layers and any other deserialised bytecode.
            # Deep copies: Functional.from_config consumes parts of the dict it is given (the spec must stay intact).
            model = keras.saving.deserialize_keras_object(copy.deepcopy(m.config), custom_objects=objs, safe_mode=True)
            model.compile_from_config(copy.deepcopy(m.compile))
        except Exception as e:
            raise UserCodeError(f"model.config could not be loaded in safe mode: {type(e).__name__}: {e}") from e
    if m.initial_weights:
        arrays = storage.get_arrays(m.initial_weights, max_bytes=max_upload_bytes)
        try:
            model.set_weights([arrays[k] for k in sorted(arrays)])
        except Exception as e:
            raise UserCodeError(f"model.initial_weights do not fit the model: {e}") from e
    return model
