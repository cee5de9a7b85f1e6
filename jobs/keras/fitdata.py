"""``model.fit``'s data forms as plain arrays: NumPy arrays and dicts/lists of them (multi-input/-output models),
packed into one content-addressed ``.npz`` (no pickle) and unpacked on the worker into the same structure.

Keys: ``x`` for a single array, ``x.d.NAME`` for a dict entry, ``x.l.0``... for a list/tuple entry; the same for
``y`` and ``sample_weight``.

>>> import numpy as np
>>> packed = pack({"x": {"a": np.zeros((2, 3)), "b": np.ones((2, 1))}, "y": np.zeros(2)})
>>> sorted(packed)
['x.d.a', 'x.d.b', 'y']
>>> sorted(unpack(packed)["x"])
['a', 'b']
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jobs.errors import SpecError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
PARTS = ("x", "y", "sample_weight")


def _leaf(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:  # any conversion failure is the user's data: say what it was
        raise SpecError([f"{where}: expected a NumPy array (or array-like), received {type(value).__name__}: {e}"]
                        ) from e
    if arr.dtype == object and not isinstance(value, np.ndarray):  # an object ndarray: Storage.put_arrays refuses it
        raise SpecError([f"{where}: expected a numeric/bool/str array, received {type(value).__name__} that "
                         "NumPy can only hold as dtype object (ragged or arbitrary Python objects)"])
    return arr


def pack_part(name: str, value: Any) -> dict[str, np.ndarray]:
    """One of ``x``/``y``/``sample_weight`` as flat npz entries (one level of dict or list nesting)."""
    if isinstance(value, Mapping):
        out: dict[str, np.ndarray] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not _NAME.fullmatch(k):
                raise SpecError([f"{name}: dict keys must be input/output names ([A-Za-z0-9_.-]), received {k!r}"])
            out[f"{name}.d.{k}"] = _leaf(v, f"{name}[{k!r}]")
        if not out:
            raise SpecError([f"{name}: expected a non-empty dict of arrays, received an empty dict"])
        return out
    if isinstance(value, (list, tuple)) and value and not np.isscalar(value[0]) and hasattr(value[0], "__len__"):
        return {f"{name}.l.{i}": _leaf(v, f"{name}[{i}]") for i, v in enumerate(value)}
    return {name: _leaf(value, name)}


def pack(parts: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{"x": ..., "y": ..., "sample_weight": ...}`` (None values left out) -> npz entries, checking lengths."""
    out: dict[str, np.ndarray] = {}
    for name, value in parts.items():
        if value is not None:
            out.update(pack_part(name, value))
    lengths = {k: (len(v) if v.ndim else -1) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise SpecError([f"data: expected the same number of samples in every array, received {shown}"])
    return out


def unpack(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """npz entries -> ``{"x": array | dict | list, "y": ..., "sample_weight": ... or None}``."""
    out: dict[str, Any] = {p: None for p in PARTS}
    lists: dict[str, dict[int, np.ndarray]] = {}
    for key, arr in arrays.items():
        part, _, rest = key.partition(".")
        if part not in PARTS:
            raise SpecError([f"data: unexpected array {key!r} in upload; expected keys x, y, sample_weight"])
        if not rest:
            out[part] = arr
        elif rest.startswith("d."):
            out[part] = out[part] if isinstance(out[part], dict) else {}
            out[part][rest[2:]] = arr
        elif rest.startswith("l.") and rest[2:].isdigit():
            lists.setdefault(part, {})[int(rest[2:])] = arr
        else:
            raise SpecError([f"data: malformed array key {key!r} in upload"])
    for part, items in lists.items():
        out[part] = [items[i] for i in sorted(items)]
    return out


def num_samples(value: Any) -> int:
    """Samples in an array or a dict/list of arrays (all of the same length)."""
    if isinstance(value, Mapping):
        return num_samples(next(iter(value.values())))
    if isinstance(value, (list, tuple)):
        return num_samples(value[0])
    return len(value)


def take(value: Any, index: Any) -> Any:
    """``value[index]`` through one level of dict/list nesting."""
    if isinstance(value, Mapping):
        return {k: v[index] for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [v[index] for v in value]
    return value[index]
