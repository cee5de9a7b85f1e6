"""Resumable checkpoints of one attempt: atomic objects + manifest, committed to Redis under the attempt's token.

The layout (keys, manifest, array groups) is :mod:`jobs.storage.ckpt_format`'s. This module owns an attempt's checkpoint
life: writing in the background, committing under the fencing token, retention, choosing and verifying the
checkpoint to resume from. Redis' checkpoint index is the authority: an object whose commit was refused (a fenced,
stale worker) or whose sha256 does not match is never loaded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jobs.contract.events import EventKind, event
from jobs.errors import CheckpointError, FencedError, StorageError
from jobs.storage import ckpt_format as fmt
from jobs.storage.base import Storage, job_key
from worker.ledger import AttemptLedger
from worker.policy import KeepPolicy

log = logging.getLogger("traind.worker")


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
    data: bytes | None = None  # a Dataset job's position (worker.data_resume.DataPosition.to_bytes())

    @property
    def key(self) -> int:
        return fmt.ckpt_key(self.epoch, self.batch)


@dataclass
class Restored:
    manifest: dict[str, Any]
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    es_best_weights: list[np.ndarray] | None
    metric_vars: list[np.ndarray] | None
    data: bytes | None = None


class Checkpoints:
    """One attempt's view of a job's checkpoints; keeps what its :class:`KeepPolicy` says (the last ``keep_last``
    epoch ends and the best one)."""

    def __init__(self, storage: Storage, ledger: AttemptLedger, keep: KeepPolicy | None = None) -> None:
        self.storage, self.ledger = storage, ledger
        self.job_id, self.attempt = ledger.job_id, ledger.attempt
        self.keep = keep or KeepPolicy()
        self.prefix = fmt.checkpoint_prefix(self.job_id)  # storage key of the checkpoint "directory" (validates the id)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ckpt-{self.job_id}")
        self._pending: Future[dict[str, Any]] | None = None
        # What benchmarks read: the training thread's time per checkpoint (wait + host copy), epochs skipped under
        # backpressure, and the background writes' durations and sizes.
        self.stall_s: list[float] = []
        self.skipped: list[float] = []
        self.write_s: list[float] = []
        self.written_bytes: list[int] = []

    # -- writing -------------------------------------------------------------------------------------------------
    def write(self, snap: Snapshot) -> dict[str, Any]:
        """Write the snapshot's object and manifest atomically; returns the manifest (not yet committed).

        The ``.npz`` is streamed to storage (sha256 computed while writing, no re-read, no in-memory copy of the
        whole archive); local storage fsyncs it before the rename.
        """
        t0 = time.perf_counter()
        name = fmt.checkpoint_name(snap.epoch, snap.batch, self.attempt)
        groups = {"w": snap.weights, "o": snap.optimizer, "e": snap.es_best_weights, "m": snap.metric_vars,
                  "d": None if snap.data is None else [np.frombuffer(snap.data, np.uint8)]}
        obj = job_key(self.job_id, fmt.checkpoint_file(name))
        meta = job_key(self.job_id, fmt.checkpoint_file(name, ".json"))
        try:
            # Object first, then its manifest; neither is visible to resume until commit() records it in Redis.
            with self.storage.open_write(obj, pipelined=True) as w:  # crc32, sha256 and the write overlap
                fmt.write_npz(w, groups)
            manifest = fmt.manifest(epoch=snap.epoch, batch=snap.batch, attempt=self.attempt, name=name,
                                    sha256=w.sha256, size=w.size, metrics=snap.metrics, state=snap.state)
            self.storage.put_bytes(meta, json.dumps(manifest, indent=1).encode())
            self.write_s.append(time.perf_counter() - t0)
            self.written_bytes.append(w.size)
            self.ledger.observe("checkpoint_write_seconds", time.perf_counter() - t0)
            self.ledger.observe("checkpoint_bytes", w.size)
        except OSError as e:
            for k in (obj, meta):
                self.storage.delete(k)
            raise StorageError(f"could not write checkpoint {name} ({e.strerror or e}); previous checkpoints are intact"
                               ) from e
        return manifest

    def commit(self, manifest: dict[str, Any], *, fields: dict[str, Any] | None = None,
               events: list[dict[str, Any]] | None = None, delete: list[int] | None = None) -> None:
        """Record the checkpoint in Redis if this attempt still owns the job; otherwise delete its objects."""
        try:
            self.ledger.commit_checkpoint(manifest, fields=fields, events=events, delete=delete)
        except FencedError:
            self._remove_files(manifest)
            raise

    def save(self, snap: Snapshot, *, fields: dict[str, Any] | None = None,
             events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Write and commit now (a preemption checkpoint: the requeue must point at a committed one)."""
        self.flush()
        manifest = self.write(snap)
        self.commit(manifest, fields=fields, events=events)
        return manifest

    def busy(self) -> bool:
        """True while the previous background write is still running."""
        return self._pending is not None and not self._pending.done()

    def offer(self, take: Callable[[], Snapshot], best_key: int | None, *, must: bool,
              export: dict[str, bool] | None = None) -> Snapshot | None:
        """An epoch-end checkpoint in the background, under the backpressure policy; the snapshot or None (skipped).

        Only ``take()`` (the device-to-host copy) runs on the training thread; packing, hashing, writing, fsync,
        upload and the commit run on the checkpoint thread. At most one snapshot is in flight, so at most one host
        copy of the state is held at once. When the previous write is still running (a write slower than an epoch):

        - ``must``: wait for it, then snapshot. Always so for the best epoch, the last one and a requested stop (the
          best model and the final state are never skipped), and for every epoch under the default policy
          (``TRAIND_CHECKPOINT_BACKPRESSURE=wait``, as Orbax's CheckpointManager waits for its previous save): every
          epoch end is checkpointed, and training slows to the storage's pace only while writes outlast epochs;
        - otherwise (``skip``) skip this epoch: no copy, no stall, recorded in :attr:`skipped` and as an event; the
          latest checkpoint stays the one being written, and the next epoch end after it lands is checkpointed.
          Work lost to a crash is still at most one write plus one epoch, and training keeps its pace.

        ``export`` names the lazy exports this checkpoint becomes once committed (``{"best": True}``): their
        records (:func:`jobs.storage.ckpt_format.checkpoint_export_record`) are set in the same commit. The next call
        (or
        :meth:`flush`) re-raises a background failure, so none is silently lost.
        """
        t0 = time.perf_counter()
        if self.busy() and not must:
            self.skipped.append(time.perf_counter() - t0)
            return None
        self.flush()
        snap = take()
        self.stall_s.append(time.perf_counter() - t0)
        names = [n for n, on in (export or {}).items() if on]

        def task() -> dict[str, Any]:
            manifest = self.write(snap)
            self._commit_retaining(manifest, best_key, names)
            return manifest

        self._pending = self._pool.submit(task)
        return snap

    def save_async(self, snap: Snapshot, best_key: int | None) -> None:
        """Write + commit ``snap`` in the background (waiting for the previous write first)."""
        self.offer(lambda: snap, best_key, must=True)

    def _commit_retaining(self, manifest: dict[str, Any], best_key: int | None, exports: list[str] | None = None
                          ) -> None:
        index = self.ledger.checkpoints()
        index[manifest["key"]] = manifest
        victims = self.keep.victims(index, best_key, manifest["key"])
        fields: dict[str, Any] = {"best_ckpt_key": best_key} if best_key is not None else {}
        for name in exports or []:
            fields[f"{name}_checkpoint"] = fmt.checkpoint_export_record(manifest)
        self.commit(manifest, fields=fields or None, delete=victims)
        self.delete_files([index[k] for k in victims])

    def flush(self) -> dict[str, Any] | None:
        fut, self._pending = self._pending, None
        return fut.result() if fut is not None else None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def _remove_files(self, manifest: dict[str, Any]) -> None:
        try:
            key = fmt.record_key(self.job_id, manifest)
        except CheckpointError as e:
            # Never delete what a corrupt or planted manifest names (``../../uploads/<sha>.npz``); say so and go on.
            msg = f"not deleting the files of a checkpoint: {e}"
            log.warning("job %s: %s", self.job_id, msg)
            try:
                self.ledger.warn_unfenced(msg)
            except Exception:  # the warning is informational; the job goes on
                pass
            return
        try:
            self.storage.delete(key)  # local storage: a symlink is removed itself, never followed
            self.storage.delete(key.removesuffix(".npz") + ".json")
        except (StorageError, OSError):
            pass

    def delete_files(self, manifests: list[dict[str, Any]]) -> None:
        for m in manifests:
            self._remove_files(m)

    def clear_incomplete(self) -> None:
        """Temp objects of writes a dead (or fenced) attempt never finished: this attempt owns the job now.
        (On object storage: multipart uploads a killed writer left unfinished are aborted.)"""
        for prefix in (job_key(self.job_id), self.prefix):
            self.storage.cleanup_incomplete(prefix)

    # -- reading -------------------------------------------------------------------------------------------------
    def verify(self, manifest: dict[str, Any]) -> bytes:
        """The manifest's object, after checking it exists and matches its sha256 (CheckpointError otherwise)."""
        return fmt.read_checkpoint(self.storage, self.job_id, manifest)

    def load(self, manifest: dict[str, Any]) -> Restored:
        g = fmt.unpack(self.verify(manifest), f"checkpoint {manifest['file']}")
        return Restored(manifest, g["w"], g["o"], g["e"] or None, g["m"] or None,
                        g["d"][0].tobytes() if g["d"] else None)

    def select(self, index: dict[int, dict[str, Any]], policy: str, best_key: int | None,
               preempt_key: int | None) -> tuple[Restored | None, list[dict[str, Any]]]:
        """The checkpoint to resume from and the events explaining the choice.

        Order of preference: a preemption checkpoint; then the policy's target (``best`` or ``latest``); then the
        nearest earlier valid checkpoint; then later ones. Corrupt ones are skipped with an event. Events name
        epochs as Keras does (1-based): ``epoch`` E with ``batch`` 0 is the end of epoch E; a mid-epoch checkpoint
        is inside epoch E (``epoch``) after its batch ``batch``.
        """
        keys = sorted(index)
        if not keys:
            if self.attempt > 1:
                # Loud, never quiet: a retried attempt with no committed checkpoint redoes everything.
                return None, [event(EventKind.NO_CHECKPOINT, f"attempt {self.attempt}: no committed checkpoint in "
                                    f"{self.storage.url} to resume from; starting over from epoch 1", "warning")]
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
            at = fmt.describe(m, k)
            try:
                restored = self.load(m)
            except CheckpointError as e:
                fields = {f: m.get(f) for f in ("batch", "file")} if isinstance(m, dict) else {}
                events.append(event(EventKind.SKIPPED_CHECKPOINT, f"skipping checkpoint {at}: {e}", "warning",
                                    epoch=fmt.keras_epoch(m), key=k, **fields))
                continue
            epoch = fmt.keras_epoch(m)
            where = f"{at}, continuing at batch {m['batch'] + 1}" if m["batch"] else at
            why = "preemption" if k == preempt_key else (policy if k == target else "fallback")
            created = m.get("created")  # when it was written (goodput: the work after it is redone)
            saved = {"saved_ms": int(created * 1000)} if isinstance(created, (int, float)) else {}
            events.append(event(EventKind.RESUMED, f"resuming from {why} checkpoint at {where} ({m['file']})",
                                epoch=epoch, batch=m["batch"], file=m["file"], why=why, **saved))
            return restored, events
        events.append(event(EventKind.NO_CHECKPOINT, f"no valid checkpoint in {self.storage.url}; starting from "
                            "scratch", "warning"))
        return None, events

    def export(self, model: Any, weights_only: bool, name: str) -> dict[str, Any]:
        """Write the user-facing model file (``best.keras`` or ``best.weights.h5``) atomically."""
        file = fmt.export_file(name, weights_only)
        key = job_key(self.job_id, file)
        suffix = fmt.export_suffix(weights_only)
        if weights_only:
            digest = self.storage.put_with(key, lambda p: model.save_weights(p), suffix=suffix)
        else:
            digest = self.storage.put_with(key, lambda p: model.save(p), suffix=suffix)
        return fmt.export_record(file, digest, weights_only)


def apply_state(model: Any, r: Restored) -> None:
    """Set ``model``'s weights and optimizer variables from a restored checkpoint (CheckpointError if they do not
    fit)."""
    try:
        model.set_weights(r.weights)
        opt = model.optimizer
        if not opt.built:
            opt.build(model.trainable_variables)
        if len(opt.variables) != len(r.optimizer):
            raise CheckpointError(f"optimizer has {len(opt.variables)} variables, checkpoint {len(r.optimizer)}")
        for v, a in zip(opt.variables, r.optimizer):
            v.assign(a)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {r.manifest['file']} does not fit the model: {e}") from e
