"""The checkpoint layout, in one place: object keys, index keys, the manifest schema, array naming, exports.

The worker writes checkpoints (:mod:`worker.checkpoint`) and the client reads them back (:mod:`jobs.keras.best_model`)
through these functions only, so the two sides cannot drift apart. Under a job's key prefix ``jobs/<id>/``:

- ``ckpt/e{epoch:06d}-b{batch:06d}-a{attempt}.npz``: a resumable checkpoint, arrays named ``{group}{i:06d}`` with
  group ``w`` (model weights), ``o`` (optimizer variables), ``e`` (EarlyStopping's best weights), ``m`` (metric
  accumulators of a mid-epoch checkpoint); loaded with ``allow_pickle=False``.
- ``ckpt/<same name>.json``: its manifest (:func:`manifest`). Redis' checkpoint index holds the same manifest and
  is the authority: an object without a committed manifest, or failing its sha256, is never loaded.
- ``best``/``latest``/``final`` + ``.keras`` (full model) or ``.weights.h5`` (weights only): the user-facing
  exports, recorded in the job's ``*_checkpoint`` fields as :func:`export_record`.

>>> ckpt_key(3, 0), checkpoint_name(3, 0, 2), checkpoint_file(checkpoint_name(3, 0, 2))
(3000000, 'e000003-b000000-a2', 'ckpt/e000003-b000000-a2.npz')
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from typing import Any

import numpy as np

from jobs.errors import CheckpointError, StorageError
from jobs.storage.base import Storage
from jobs.storage.names import job_key

CKPT_DIR = "ckpt"
BATCH_SLOTS = 10**6  # index key = epoch * BATCH_SLOTS + batch: epoch-end checkpoints have batch 0
# weights, optimizer variables, EarlyStopping best weights, metric variables, a Dataset's position (worker/data_resume)
GROUPS = ("w", "o", "e", "m", "d")
EXPORT_NAMES = ("best", "latest", "final")
_CKPT_FILE = re.compile(r"ckpt/[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.npz")  # what a manifest records: a file in ckpt/
_ARRAY = re.compile(r"[woemd][0-9]{6}")  # the array names pack() writes
_SHA = re.compile(r"[0-9a-f]{64}")


def ckpt_key(epoch: int, batch: int) -> int:
    """The checkpoint index key of (completed epochs, batches done in the next epoch)."""
    return epoch * BATCH_SLOTS + batch


def is_epoch_end(key: int) -> bool:
    return key % BATCH_SLOTS == 0


def checkpoint_name(epoch: int, batch: int, attempt: int) -> str:
    """Base name (no suffix) of a resumable checkpoint's ``.npz`` and ``.json`` objects."""
    return f"e{epoch:06d}-b{batch:06d}-a{attempt}"


def checkpoint_file(name: str, suffix: str = ".npz") -> str:
    """The checkpoint's path relative to its job (what a manifest's ``file`` holds)."""
    return f"{CKPT_DIR}/{name}{suffix}"


def checkpoint_prefix(job_id: str) -> str:
    """Storage key prefix of a job's checkpoints (validates the id)."""
    return job_key(job_id, CKPT_DIR)


def check_manifest(m: object) -> dict[str, Any]:
    """``m`` if it has the shape :func:`manifest` builds, else CheckpointError saying what is wrong.

    The index in Redis is the authority on which checkpoints exist, but its entries are data: one that is corrupt or
    planted must be skipped, never trusted to name a file or a resume point.
    """
    if not isinstance(m, dict):
        raise CheckpointError(f"manifest is corrupt: expected a JSON object, received {str(m)[:100]!r}")
    bad = [k for k in ("epoch", "batch") if not isinstance(m.get(k), int) or isinstance(m.get(k), bool) or m[k] < 0]
    if not isinstance(m.get("sha256"), str) or not _SHA.fullmatch(m["sha256"]):
        bad.append("sha256")
    if not isinstance(m.get("state"), dict):
        bad.append("state")
    if bad:
        raise CheckpointError(f"manifest is corrupt: missing or invalid {', '.join(bad)}")
    name = m.get("file")
    if not isinstance(name, str) or not _CKPT_FILE.fullmatch(name):
        raise CheckpointError(f"manifest names file {str(name)[:200]!r}; expected a file directly inside the job's "
                              "ckpt/ directory (ckpt/<name>.npz)")
    return m


def record_key(job_id: str, record: dict[str, Any]) -> str:
    """The storage key of the file a manifest names: only a plain name directly inside the job's ``ckpt/``.
    CheckpointError for a manifest that is corrupt or names anything else."""
    name = check_manifest(record)["file"]
    try:
        return job_key(job_id, name)
    except StorageError as e:
        raise CheckpointError(f"checkpoint manifest names an invalid file: {e}") from e


def keras_epoch(m: Any) -> int | None:
    """The 1-based epoch a checkpoint belongs to as Keras counts: E for the end of epoch E, E+1 inside it."""
    ep = m.get("epoch") if isinstance(m, dict) else None
    if not isinstance(ep, int):
        return None
    return ep + 1 if isinstance(m.get("batch"), int) and m["batch"] else ep


def describe(m: Any, key: int) -> str:
    """``epoch E`` / ``epoch E+1 batch B`` (Keras' 1-based numbering) for an event, from a manifest that may be
    corrupt (then its index key)."""
    ep = m.get("epoch") if isinstance(m, dict) else None
    batch = m.get("batch") if isinstance(m, dict) else None
    if not isinstance(ep, int):
        return str(key)
    return f"epoch {ep + 1} batch {batch}" if isinstance(batch, int) and batch else f"epoch {ep}"


def manifest(*, epoch: int, batch: int, attempt: int, name: str, sha256: str, size: int, metrics: dict[str, Any],
             state: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a written checkpoint (stored next to it and, once committed, in Redis' index)."""
    return {
        "key": ckpt_key(epoch, batch), "epoch": epoch, "batch": batch, "attempt": attempt,
        "file": checkpoint_file(name), "sha256": sha256, "size": size, "metrics": metrics, "state": state,
        "created": time.time(),
    }


def _named(groups: dict[str, list[np.ndarray] | None]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for prefix in GROUPS:
        for i, a in enumerate(groups.get(prefix) or []):
            arrays[f"{prefix}{i:06d}"] = np.asarray(a)
    return arrays


def pack(groups: dict[str, list[np.ndarray] | None]) -> bytes:
    """The ``.npz`` bytes of ``{group letter: arrays}`` (uncompressed: checkpoint stalls matter more than disk)."""
    buf = io.BytesIO()
    np.savez(buf, **_named(groups))
    return buf.getvalue()


CHUNK_BYTES = 16 * 2**20  # what an array's data is written in: bounded pieces for the stream's queues


def write_npz(stream: Any, groups: dict[str, list[np.ndarray] | None]) -> None:
    """Stream the same ``.npz`` as :func:`pack` into a write-only ``stream``
    (a :class:`jobs.storage.streams.HashingWriter`).

    No copy of the whole archive is built in memory: ``zipfile`` writes each member as it goes (data descriptors,
    as the stream cannot seek). A C-contiguous array's data goes out as ``memoryview`` slices of the array itself,
    16 MiB each, with no copy (numpy's own ``write_array`` copies each chunk twice, through ``nditer`` and
    ``tobytes``); the arrays must therefore stay unchanged until the stream is finished, as a snapshot's host buffers
    do (:meth:`worker.checkpoint.Checkpoints.offer` copies into them only once the previous write is done).

    >>> buf = io.BytesIO(); write_npz(buf, {"w": [np.ones(3)]}); unpack(buf.getvalue())["w"][0].tolist()
    [1.0, 1.0, 1.0]
    """
    with zipfile.ZipFile(stream, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in _named(groups).items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:  # what np.savez writes, streamed
                _write_npy(member, a)


def _write_npy(member: Any, a: np.ndarray) -> None:
    header = np.lib.format.header_data_from_array_1_0(a)
    if a.dtype.hasobject or not a.flags.c_contiguous or a.ndim == 0 or not a.size:
        np.lib.format.write_array(member, a, allow_pickle=False)  # rare: numpy's own path (copies, or refuses)
        return
    try:
        np.lib.format.write_array_header_1_0(member, header)  # the version write_array picks for such arrays
    except ValueError:  # a header too long for format 1.0 (a huge structured dtype): numpy's own path
        np.lib.format.write_array(member, a, allow_pickle=False)
        return
    data = memoryview(a).cast("B")
    for i in range(0, data.nbytes, CHUNK_BYTES):
        member.write(data[i:i + CHUNK_BYTES])


def checkpoint_export_record(m: dict[str, Any]) -> dict[str, Any]:
    """A ``best_checkpoint``/``latest_checkpoint`` record naming a committed resumable checkpoint: the lazy export.

    During training the user-facing ``best`` is not written on the training thread; it is the verified resumable
    checkpoint of the best epoch, converted to a model on ``load_model`` (:mod:`jobs.keras.best_model`). The
    ``best.keras`` / ``best.weights.h5`` file is written when the job finishes.
    """
    return {"file": m["file"], "sha256": m["sha256"], "format": "checkpoint", "key": m["key"]}


def unpack(data: bytes, what: str = "checkpoint", only: str | None = None) -> dict[str, list[np.ndarray]]:
    """``{group letter: arrays in order}`` of a checkpoint's bytes (only group ``only`` when given)."""
    groups: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            unexpected = [n for n in z.files if not _ARRAY.fullmatch(n)]
            if unexpected:
                raise CheckpointError(f"{what}: unexpected array name(s) {unexpected[:5]!r}; expected w/o/e/m/d + 6 "
                                      "digits")
            for name in sorted(z.files):
                if only is None or name[0] == only:
                    groups[name[0]].append(z[name])
    except CheckpointError:
        raise
    except Exception as e:  # any unreadable file is a checkpoint to skip, not a failed job
        raise CheckpointError(f"{what} could not be read: {type(e).__name__}: {e}") from e
    return groups


def read_checkpoint(storage: Storage, job_id: str, record: dict[str, Any]) -> bytes:
    """A committed checkpoint's bytes, verified against its manifest's sha256 (CheckpointError otherwise)."""
    key = record_key(job_id, record)
    return storage.read_verified(key, record["sha256"], what=f"checkpoint {record['file']}")


def export_suffix(weights_only: bool) -> str:
    return ".weights.h5" if weights_only else ".keras"


def export_file(name: str, weights_only: bool) -> str:
    """File name of a user-facing export: ``best.keras`` or ``best.weights.h5`` (``latest``, ``final``)."""
    if name not in EXPORT_NAMES:
        raise ValueError(f"export name: expected one of {EXPORT_NAMES}, received {name!r}")
    return name + export_suffix(weights_only)


def export_record(file: str, sha256: str, weights_only: bool) -> dict[str, Any]:
    """What a job's ``best_checkpoint``/``latest_checkpoint``/``final_checkpoint`` field holds."""
    return {"file": file, "sha256": sha256, "format": "weights" if weights_only else "keras"}


def export_key(job_id: str, record: dict[str, Any]) -> tuple[str, str, str]:
    """(storage key, file name, suffix Keras needs) of an export record; only its name is taken from the record,
    so a record cannot name a key outside the job's top level."""
    name = str(record["file"]).rsplit("/", 1)[-1]
    return job_key(job_id, name), name, export_suffix(record.get("format") != "keras")
