"""Submit-time checks that need Keras: custom objects named by reference, the model rebuilt in safe mode exactly as a
worker will rebuild it, and ``monitor`` fields checked against the metrics that model and its data will log.

>>> [p] = monitor_problems({"checkpoint.monitor": "val_los"}, ["loss", "mae"], has_validation=True)
>>> p.endswith("(it logs loss, mae, val_loss, val_mae); did you mean 'val_loss'?")
True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobs.errors import SpecError
from jobs.refs import ref_problem


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
