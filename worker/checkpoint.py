"""Resumable checkpoints: atomic files + manifest, committed to Redis under the attempt's fencing token.

A checkpoint is ``ckpt/e{epoch}-b{batch}-a{attempt}.npz`` (model weights, optimizer variables, EarlyStopping's
best weights, metric accumulators for mid-epoch ones; ``allow_pickle=False`` on load) plus a JSON manifest
(epoch, metrics, sha256, callback state). Redis' checkpoint index is the authority: a file whose commit was
refused (a fenced, stale worker) or whose sha256 does not match is never loaded.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jobs import telemetry
from jobs.errors import CheckpointError, FencedError, StorageError
from jobs.storage import Storage, job_key
from jobs.store import JobStore, event

log = logging.getLogger("traind.worker")
BATCH_SLOTS = 10**6  # index key = epoch * BATCH_SLOTS + batch: epoch-end checkpoints have batch 0
_CKPT_FILE = re.compile(r"ckpt/[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.npz")  # what write() records: a file in ckpt/
_ARRAY = re.compile(r"[woem][0-9]{6}")  # the array names _pack writes
_SHA = re.compile(r"[0-9a-f]{64}")


def ckpt_key(epoch: int, batch: int) -> int:
    return epoch * BATCH_SLOTS + batch


@dataclass
class Snapshot:
    """Everything needed to continue training exactly where this snapshot was taken (host memory copies)."""

    epoch: int  # completed epochs
    batch: int  # batches done in epoch `epoch` (0-based index) for a mid-epoch snapshot; 0 at an epoch end
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    state: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    es_best_weights: list[np.ndarray] | None = None
    metric_vars: list[np.ndarray] | None = None

    @property
    def key(self) -> int:
        return ckpt_key(self.epoch, self.batch)


@dataclass
class Restored:
    manifest: dict[str, Any]
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    es_best_weights: list[np.ndarray] | None
    metric_vars: list[np.ndarray] | None


def _pack(s: Snapshot) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in (("w", s.weights), ("o", s.optimizer), ("e", s.es_best_weights), ("m", s.metric_vars)):
        for i, a in enumerate(group or []):
            arrays[f"{prefix}{i:06d}"] = np.asarray(a)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed: checkpoint stalls matter more than disk here
    return buf.getvalue()


def _unpack(data: bytes) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = {"w": [], "o": [], "e": [], "m": []}
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        unexpected = [n for n in z.files if not _ARRAY.fullmatch(n)]
        if unexpected:
            raise CheckpointError(f"unexpected array name(s) {unexpected[:5]!r}; expected w/o/e/m + 6 digits")
        for name in sorted(z.files):
            groups[name[0]].append(z[name])
    return groups


def check_manifest(m: object) -> dict[str, Any]:
    """``m`` if it has the shape :meth:`Checkpoints.write` records, else CheckpointError saying what is wrong.

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


def _where(m: Any, key: int) -> str:
    """``epoch E`` / ``epoch E+1 batch B`` for an event, from a manifest that may be corrupt (then its index key)."""
    ep = m.get("epoch") if isinstance(m, dict) else None
    batch = m.get("batch") if isinstance(m, dict) else None
    if not isinstance(ep, int):
        return str(key)
    return f"epoch {ep + 1} batch {batch}" if isinstance(batch, int) and batch else f"epoch {ep}"


class Checkpoints:
    """One attempt's view of a job's checkpoints."""

    def __init__(self, storage: Storage, store: JobStore, job_id: str, attempt: int, token: str) -> None:
        self.storage, self.store = storage, store
        self.job_id, self.attempt, self.token = job_id, attempt, token
        self.prefix = job_key(job_id, "ckpt")  # storage key of the checkpoint "directory" (validates the id)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ckpt-{job_id}")
        self._pending: Future[dict[str, Any]] | None = None
        self.stall_s: list[float] = []  # time the training thread waited per checkpoint (benchmarks read it)

    # -- writing -------------------------------------------------------------------------------------------------
    def write(self, snap: Snapshot) -> dict[str, Any]:
        """Write the snapshot's file and manifest atomically; returns the manifest (not yet committed)."""
        t0 = time.perf_counter()
        name = f"e{snap.epoch:06d}-b{snap.batch:06d}-a{self.attempt}"
        data = _pack(snap)
        key = f"{self.prefix}/{name}"
        try:
            # Object first, then its manifest; neither is visible to resume until commit() records it in Redis.
            digest = self.storage.put_bytes(f"{key}.npz", data)
            manifest = {
                "key": snap.key, "epoch": snap.epoch, "batch": snap.batch, "attempt": self.attempt,
                "file": f"ckpt/{name}.npz", "sha256": digest, "size": len(data), "metrics": snap.metrics,
                "state": snap.state, "created": time.time(),
            }
            self.storage.put_bytes(f"{key}.json", json.dumps(manifest, indent=1).encode())
            telemetry.observe(self.store.r, "checkpoint_write_seconds", time.perf_counter() - t0)
            telemetry.observe(self.store.r, "checkpoint_bytes", len(data))
        except OSError as e:
            for k in (f"{key}.npz", f"{key}.json"):
                self.storage.delete(k)
            raise StorageError(f"could not write checkpoint {name} ({e.strerror or e}); previous checkpoints are intact"
                               ) from e
        return manifest

    def commit(self, manifest: dict[str, Any], *, fields: dict[str, Any] | None = None,
               events: list[dict[str, Any]] | None = None, delete: list[int] | None = None) -> None:
        """Record the checkpoint in Redis if this attempt still owns the job; otherwise delete its files."""
        try:
            self.store.fenced_update(self.job_id, self.token, ckpt_set={manifest["key"]: manifest}, fields=fields,
                                     events=events, ckpt_del=delete or [])
        except FencedError:
            self._remove_files(manifest)
            raise

    def save_async(self, snap: Snapshot, after_write: Any) -> None:
        """Write + commit in the background (one in flight); ``after_write(manifest)`` commits it.

        Training continues while the file is written; the next save (or :meth:`flush`) waits for this one and
        re-raises its error, so a failure is never silently lost.
        """
        t0 = time.perf_counter()
        self.flush()
        self.stall_s.append(time.perf_counter() - t0)

        def task() -> dict[str, Any]:
            manifest = self.write(snap)
            after_write(manifest)
            return manifest

        self._pending = self._pool.submit(task)

    def flush(self) -> dict[str, Any] | None:
        fut, self._pending = self._pending, None
        return fut.result() if fut is not None else None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def key_of(self, manifest: dict[str, Any]) -> str:
        """The storage key of the file a manifest names: only a plain name directly inside this job's ckpt/."""
        name = check_manifest(manifest)["file"]
        try:
            return job_key(self.job_id, name)
        except StorageError as e:
            raise CheckpointError(f"checkpoint manifest names an invalid file: {e}") from e

    def _remove_files(self, manifest: dict[str, Any]) -> None:
        try:
            key = self.key_of(manifest)
        except CheckpointError as e:
            # Never delete what a corrupt or planted manifest names (``../../uploads/<sha>.npz``); say so and go on.
            msg = f"not deleting the files of a checkpoint: {e}"
            log.warning("job %s: %s", self.job_id, msg)
            try:
                self.store.add_event(self.job_id, msg, "warning")
            except Exception:  # noqa: BLE001 - the warning is informational; the job goes on
                pass
            return
        try:
            self.storage.delete(key)  # local storage: a symlink is removed itself, never followed
            self.storage.delete(key.removesuffix(".npz") + ".json")
        except (StorageError, OSError):
            pass

    def retention_victims(self, index: dict[int, dict[str, Any]], keep_last: int, best_key: int | None,
                          newest_key: int) -> list[int]:
        """Index keys to delete: all but the last ``keep_last`` epoch-end checkpoints and the best one."""
        ends = sorted(k for k in index if k % BATCH_SLOTS == 0 and k <= newest_key)
        keep = set(ends[-keep_last:]) | {newest_key}
        if best_key is not None:
            keep.add(best_key)
        # A mid-epoch (preemption) checkpoint is obsolete once a later epoch-end checkpoint exists.
        return [k for k in index if k not in keep and k <= newest_key]

    def delete_files(self, manifests: list[dict[str, Any]]) -> None:
        for m in manifests:
            self._remove_files(m)

    # -- reading -------------------------------------------------------------------------------------------------
    def verify(self, manifest: dict[str, Any]) -> bytes:
        """The manifest's object, after checking it exists and matches its sha256 (CheckpointError otherwise)."""
        key = self.key_of(manifest)
        return self.storage.read_verified(key, manifest["sha256"], what=f"checkpoint {manifest['file']}")

    def load(self, manifest: dict[str, Any]) -> Restored:
        data = self.verify(manifest)
        try:
            g = _unpack(data)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {manifest['file']}: {e}") from e
        except Exception as e:  # noqa: BLE001 - any unreadable file is a checkpoint to skip, not a failed job
            raise CheckpointError(f"checkpoint {manifest['file']} could not be read: {type(e).__name__}: {e}") from e
        return Restored(manifest, g["w"], g["o"], g["e"] or None, g["m"] or None)

    def select(self, index: dict[int, dict[str, Any]], policy: str, best_key: int | None,
               preempt_key: int | None) -> tuple[Restored | None, list[dict[str, Any]]]:
        """The checkpoint to resume from and the events explaining the choice.

        Order of preference: a preemption checkpoint; then the policy's target (``best`` or ``latest``); then the
        nearest earlier valid checkpoint; then later ones. Corrupt ones are skipped with an event.
        """
        keys = sorted(index)
        if not keys:
            if self.attempt > 1:
                # Loud, never quiet: a retried attempt with no committed checkpoint redoes everything.
                return None, [event(f"attempt {self.attempt}: no committed checkpoint in {self.storage.url} to resume "
                                    "from; starting over from epoch 1", "warning")]
            return None, []
        latest = keys[-1]
        target = preempt_key if preempt_key in index else (best_key if policy == "best" and best_key in index
                                                           else latest)
        earlier = [k for k in reversed(keys) if k < target]
        later = [k for k in keys if k > target]
        events: list[dict[str, Any]] = []
        for k in [target, *earlier, *later]:
            m = index[k]
            # Keras' 1-based numbering: an end-of-epoch checkpoint is "epoch E" (E finished); a mid-epoch one
            # (preemption) is inside epoch E+1, after its batch B, and training continues with batch B+1.
            at = _where(m, k)
            try:
                restored = self.load(m)
            except CheckpointError as e:
                events.append(event(f"skipping checkpoint {at}: {e}", "warning"))
                continue
            where = f"{at}, continuing at batch {m['batch'] + 1}" if m["batch"] else at
            why = "preemption checkpoint" if k == preempt_key else (
                f"{policy} checkpoint" if k == target else "fallback checkpoint")
            events.append(event(f"resuming from {why} at {where} ({m['file']})"))
            return restored, events
        events.append(event(f"no valid checkpoint in {self.storage.url}; starting from scratch", "warning"))
        return None, events

    def export(self, model: Any, weights_only: bool, name: str) -> dict[str, Any]:
        """Write the user-facing model file (``best.keras`` or ``best.weights.h5``) atomically."""
        suffix = ".weights.h5" if weights_only else ".keras"
        key = job_key(self.job_id, f"{name}{suffix}")
        if weights_only:
            digest = self.storage.put_with(key, lambda p: model.save_weights(p), suffix=suffix)
        else:
            digest = self.storage.put_with(key, lambda p: model.save(p), suffix=suffix)
        return {"file": f"{name}{suffix}", "sha256": digest, "format": "weights" if weights_only else "keras"}
