"""The on-disk checkpoint layout, in one place: file names, index keys, the manifest schema, array naming.

The worker writes checkpoints (:mod:`worker.checkpoint`) and the client reads them back
(:mod:`jobs.modelio`) through these functions only, so the two sides cannot drift apart.

Under a job's directory:

- ``ckpt/e{epoch:06d}-b{batch:06d}-a{attempt}.npz``: a resumable checkpoint, arrays named ``{group}{i:06d}`` with
  group ``w`` (model weights), ``o`` (optimizer variables), ``e`` (EarlyStopping's best weights), ``m`` (metric
  accumulators of a mid-epoch checkpoint); loaded with ``allow_pickle=False``.
- ``ckpt/<same name>.json``: its manifest (:func:`manifest`); Redis' checkpoint index holds the same manifest and is
  the authority: a file without a committed manifest, or failing its sha256, is never loaded.
- ``best``/``latest``/``final`` + ``.keras`` (full model) or ``.weights.h5`` (weights only): user-facing exports,
  recorded in the job's ``*_checkpoint`` fields as :func:`export_record`.

>>> ckpt_key(3, 0), checkpoint_name(3, 0, 2)
(3000000, 'e000003-b000000-a2')
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.errors import CheckpointError
from jobs.storage import Storage, sha256_file

CKPT_DIR = "ckpt"
BATCH_SLOTS = 10**6  # index key = epoch * BATCH_SLOTS + batch: epoch-end checkpoints have batch 0
GROUPS = ("w", "o", "e", "m")  # weights, optimizer variables, EarlyStopping best weights, metric variables
EXPORT_NAMES = ("best", "latest", "final")


def ckpt_key(epoch: int, batch: int) -> int:
    """The checkpoint index key of (completed epochs, batches done in the next epoch)."""
    return epoch * BATCH_SLOTS + batch


def is_epoch_end(key: int) -> bool:
    return key % BATCH_SLOTS == 0


def checkpoint_name(epoch: int, batch: int, attempt: int) -> str:
    """Base name (no suffix) of a resumable checkpoint's ``.npz`` and ``.json`` files."""
    return f"e{epoch:06d}-b{batch:06d}-a{attempt}"


def checkpoint_path(job_dir: Path, name: str, suffix: str = ".npz") -> Path:
    return job_dir / CKPT_DIR / f"{name}{suffix}"


def manifest(*, epoch: int, batch: int, attempt: int, name: str, sha256: str, size: int, metrics: dict[str, Any],
             state: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a written checkpoint (stored next to it and, once committed, in Redis' index)."""
    return {
        "key": ckpt_key(epoch, batch), "epoch": epoch, "batch": batch, "attempt": attempt,
        "file": f"{CKPT_DIR}/{name}.npz", "sha256": sha256, "size": size, "metrics": metrics, "state": state,
        "created": time.time(),
    }


def pack(groups: dict[str, list[np.ndarray] | None]) -> bytes:
    """The ``.npz`` bytes of ``{group letter: arrays}`` (uncompressed: checkpoint stalls matter more than disk)."""
    arrays: dict[str, np.ndarray] = {}
    for prefix in GROUPS:
        for i, a in enumerate(groups.get(prefix) or []):
            arrays[f"{prefix}{i:06d}"] = np.asarray(a)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(path: Path, only: str | None = None) -> dict[str, list[np.ndarray]]:
    """``{group letter: arrays in order}`` of a checkpoint file (only group ``only`` when given)."""
    groups: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in sorted(z.files):
                if name[:1] in groups and (only is None or name[:1] == only):
                    groups[name[0]].append(z[name])
    except (ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path.name} could not be read: {e}") from e
    return groups


def verified_path(storage: Storage, job_id: str, record: dict[str, Any], what: str = "checkpoint") -> Path:
    """The file a manifest or export record names (confined to the job's directory), after checking it exists
    and matches the sha256 recorded for it. Raises CheckpointError."""
    path = storage.confine(storage.job_dir(job_id) / record["file"])
    if not path.exists():
        raise CheckpointError(f"{what} {record['file']} is missing")
    if sha256_file(path) != record["sha256"]:
        raise CheckpointError(f"{what} {record['file']} failed its sha256 check (torn or corrupt)")
    return path


def export_file(name: str, weights_only: bool) -> str:
    """File name of a user-facing export: ``best.keras`` or ``best.weights.h5`` (``latest``, ``final``)."""
    if name not in EXPORT_NAMES:
        raise ValueError(f"export name: expected one of {EXPORT_NAMES}, received {name!r}")
    return name + (".weights.h5" if weights_only else ".keras")


def export_record(file: str, sha256: str, weights_only: bool) -> dict[str, Any]:
    """What a job's ``best_checkpoint``/``latest_checkpoint``/``final_checkpoint`` field holds."""
    return {"file": file, "sha256": sha256, "format": "weights" if weights_only else "keras"}
