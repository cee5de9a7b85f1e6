"""A finite ``tf.data.Dataset`` crosses to the workers as *data only*: materialised once with TensorFlow's own
``Dataset.save`` (elements, no Python code), packed into one tar object ``uploads/ds-<sha256>.tar`` named by its
sha256 (local directory or object store alike) and verified again on load. A pipeline that holds Python functions
(``tf.py_function``, ``Dataset.from_generator``) is refused: traind runs no user Python except allowlisted
loader modules.

Imports TensorFlow lazily.

>>> # digest = save_dataset(ds, storage)          # client
>>> # ds = load_dataset(storage, digest)          # worker
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from jobs.errors import LimitError, SpecError, StorageError
from jobs.storage.base import DIGEST_RE, Storage

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
    except Exception as e:  # a pipeline TF cannot serialise cannot be shipped either
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


def dataset_key(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise StorageError(f"invalid dataset digest {digest!r}: expected 64 hex characters (sha256)")
    return f"uploads/ds-{digest}.tar"


def save_dataset(ds: Any, storage: Storage, what: str = "x", max_bytes: int | None = None) -> str:
    """Check, materialise (``Dataset.save``) and store ``ds`` as one tar object; return the sha256 naming it."""
    check_dataset(ds, what)
    with tempfile.TemporaryDirectory(prefix="traind-ds-") as d:
        ds.save(str(Path(d) / "data"))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(Path(d) / "data", arcname="data")
    data = buf.getvalue()
    if max_bytes is not None and len(data) > max_bytes:
        raise LimitError([f"{what}: the saved Dataset is {len(data)} bytes, over TRAIND_MAX_UPLOAD_BYTES={max_bytes}"])
    return storage.put_content_addressed(data, dataset_key)


def local_dir() -> Path:
    """Where workers unpack stored Datasets (Dataset.load reads lazily, so the files must outlive the call)."""
    return Path(tempfile.gettempdir()) / f"traind-datasets-{os.getuid()}"


def load_dataset(storage: Storage, digest: str, max_bytes: int | None = None) -> Any:
    """The stored Dataset, verified against ``digest`` and unpacked once per machine (reused by later attempts)."""
    import tensorflow as tf

    dest = local_dir() / digest
    if not (dest / "data").is_dir():
        # bounded: an oversized object is refused before it is downloaded
        data = storage.read_verified(dataset_key(digest), digest, f"dataset upload {digest}", max_bytes)
        local_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=local_dir()))
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
                tar.extractall(tmp, filter="data")  # "data": no absolute paths, links out, devices or modes
            try:
                os.replace(tmp, dest)  # all or nothing; a concurrent unpack of the same digest may win
            except OSError:
                if not (dest / "data").is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tf.data.Dataset.load(str(dest / "data"))
