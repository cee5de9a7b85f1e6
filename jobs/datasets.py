"""A finite ``tf.data.Dataset`` crosses to the workers as *data only*: materialised once with TensorFlow's own
``Dataset.save`` (elements, no Python code), stored under ``uploads/ds-<sha256>/`` and named by the sha256 of its
files, verified again on load. A pipeline that holds Python functions (``tf.py_function``, ``Dataset.from_generator``)
is refused: traind runs no user Python except allowlisted loader modules.

Imports TensorFlow lazily.

>>> # digest = save_dataset(ds, storage)          # client
>>> # ds = load_dataset(storage, digest)          # worker
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jobs.errors import LimitError, SpecError, StorageError
from jobs.storage import Storage, fsync_dir

# Graph ops that call back into the Python interpreter: a saved dataset must not depend on them.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc", "GeneratorDataset"})
ALTERNATIVE = ("pass NumPy arrays, a Dataset built from tensors only, or name a loader module on the workers' "
               "allowlist in the spec (data.loader: 'module:function' returning the Dataset)")


def is_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("tensorflow") and hasattr(obj, "element_spec")


def python_ops(ds: Any) -> set[str]:
    """The Python-calling ops anywhere in the dataset's pipeline graph (functions of map/filter/... included)."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(tf.raw_ops.DatasetToGraphV2(
        input_dataset=ds._variant_tensor, external_state_policy=0).numpy())  # 0: warn, never fail on state
    found = {n.op for n in graph_def.node if n.op in PYTHON_OPS}
    for fn in graph_def.library.function:
        found.update(n.op for n in fn.node_def if n.op in PYTHON_OPS)
    return found


def check_dataset(ds: Any, what: str) -> None:
    """Refuse infinite datasets and pipelines with Python functions, saying why and what to do instead."""
    import tensorflow as tf

    try:
        ops = python_ops(ds)
    except Exception as e:  # noqa: BLE001 - a pipeline TF cannot serialise cannot be shipped either
        raise SpecError([f"{what}: this tf.data pipeline cannot be serialised by TensorFlow ({type(e).__name__}: "
                         f"{str(e)[:200]}); {ALTERNATIVE}"]) from e
    if ops:
        raise SpecError([
            f"{what}: the tf.data pipeline calls Python code ({', '.join(sorted(ops))}: tf.py_function, "
            "tf.numpy_function or Dataset.from_generator), which traind neither pickles nor runs on its workers; "
            + ALTERNATIVE])
    if int(ds.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise SpecError([f"{what}: the Dataset is infinite (a .repeat() without a count); traind stores it once, so "
                         "it must be finite: drop .repeat() (each epoch reads the whole Dataset, as in Keras) or "
                         "use steps_per_epoch with a finite .repeat(n)"])


def tree_digest(root: Path) -> str:
    """sha256 over the sorted relative paths and contents of every file under ``root``."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(8, "big") + rel)
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def dataset_path(storage: Storage, digest: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{64}", digest or ""):
        raise StorageError(f"invalid dataset digest {digest!r}: expected 64 hex characters (sha256)")
    return storage.confine(Path("uploads") / f"ds-{digest}")


def save_dataset(ds: Any, storage: Storage, what: str = "x", max_bytes: int | None = None) -> str:
    """Check, materialise (``Dataset.save``) and store ``ds``; return the sha256 naming it."""
    check_dataset(ds, what)
    uploads = storage.confine("uploads")
    uploads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ds-", dir=uploads))
    try:
        ds.save(str(tmp / "data"))
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if max_bytes is not None and size > max_bytes:
            raise LimitError([f"{what}: the saved Dataset is {size} bytes, over TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
        digest = tree_digest(tmp)
        dest = dataset_path(storage, digest)
        if dest.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)  # a directory rename: readers see all of it or nothing
            fsync_dir(uploads)
        return digest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_dataset(storage: Storage, digest: str) -> Any:
    """The stored Dataset, after checking its files still hash to ``digest``."""
    import tensorflow as tf

    path = dataset_path(storage, digest)
    if not path.is_dir():
        raise StorageError(f"dataset upload {digest} not found under {storage.root / 'uploads'}")
    if tree_digest(path) != digest:
        raise StorageError(f"dataset upload {digest} is corrupt: its files do not hash to its name")
    return tf.data.Dataset.load(str(path / "data"))
