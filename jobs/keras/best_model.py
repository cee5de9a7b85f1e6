"""A job's best model, decided in one place: which checkpoint or export it is, and how it is loaded and verified.

- During training (the worker): :class:`BestModel` holds the index key of the checkpoint monitor's best epoch. That
  epoch's resumable checkpoint is kept by retention and recorded as a lazy ``best_checkpoint`` (no export on the
  training thread).
- At the job's end (the worker): :meth:`BestModel.end_plan` says which user-facing files are written from the
  model and whether ``best`` comes from the best epoch's checkpoint instead.
- Loading (``JobHandle.load_model``): :func:`choose` picks the record to load (a lazy record's committed
  checkpoint, else the export with the resumable checkpoint as its fallback); :func:`load_job_model` loads it,
  verified against the sha256 Redis recorded.

Keras is imported lazily: the pure decisions run anywhere.

>>> b = BestModel()
>>> b.improved(3)
>>> b.key, b.end_plan(epochs_done=5, save_best_only=True)
(3000000, ExportPlan(latest=False, best_from_model=False, best_from_checkpoint=3000000))
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.contract.spec import JobSpec
from jobs.errors import CheckpointError, StorageError
from jobs.keras.modelio import build_model, custom_objects
from jobs.storage import ckpt_format as fmt
from jobs.storage.base import Storage

LOADABLE = ("best", "final")  # exports load_model reads (a lazy record may also name "latest")


@dataclass(frozen=True)
class ExportPlan:
    """The user-facing files written at a job's end, in this order: ``latest`` and (when the last epoch is the best)
    ``best`` from the model, then ``final`` (EarlyStopping's best weights restored first), then ``best`` from
    the checkpoint ``best_from_checkpoint`` (the model is done training by then)."""

    latest: bool
    best_from_model: bool
    best_from_checkpoint: int | None


@dataclass
class BestModel:
    """The checkpoint index key of the best epoch so far (None: no best epoch recorded)."""

    key: int | None = None

    def improved(self, epoch: int) -> None:
        """1-based ``epoch`` improved on the checkpoint monitor: its epoch-end checkpoint is the best."""
        self.key = fmt.ckpt_key(epoch, 0)

    def resumed(self, best_epoch: int | None, index: dict[int, Any]) -> None:
        """After a resume: the tracker's best epoch, while its checkpoint is still committed."""
        key = fmt.ckpt_key(best_epoch, 0) if best_epoch else None
        self.key = key if key is not None and key in index else None

    def is_epoch(self, epoch: int) -> bool:
        return self.key is not None and self.key == fmt.ckpt_key(epoch, 0)

    def end_plan(self, epochs_done: int, save_best_only: bool) -> ExportPlan:
        """What to export when training ends after ``epochs_done`` epochs.

        >>> BestModel(6000000).end_plan(6, False)
        ExportPlan(latest=True, best_from_model=True, best_from_checkpoint=None)
        """
        now = self.is_epoch(epochs_done)
        return ExportPlan(latest=not save_best_only, best_from_model=now,
                          best_from_checkpoint=self.key if self.key is not None and not now else None)


@dataclass(frozen=True)
class Choice:
    """What ``load_model(which)`` loads: a committed checkpoint ``manifest``, or the ``export`` record (with the
    checkpoint of the same epoch as the fallback when the export fails verification)."""

    manifest: dict[str, Any] | None = None
    export: dict[str, Any] | None = None


def record(status: dict[str, Any], which: str) -> Any:
    """The job's ``<which>_checkpoint`` record (a dict, parsed if still JSON text)."""
    rec = status.get(f"{which}_checkpoint")
    return json.loads(rec) if isinstance(rec, str) else rec


def choose(job_id: str, which: str, status: dict[str, Any], index: Callable[[], dict[int, Any]]) -> Choice:
    """Which record ``load_model(which)`` loads (``index`` reads the checkpoint index, only when needed).

    A lazy record (written during training) names the best epoch's resumable checkpoint; it must still be in the
    index with the same sha256 (CheckpointError otherwise: retention replaced it, try again).

    >>> choose("j", "best", {"best_checkpoint": {"format": "keras", "file": "best.keras"}}, dict).export["file"]
    'best.keras'
    """
    rec = record(status, which)
    if isinstance(rec, dict) and rec.get("format") == "checkpoint":
        manifest = index().get(rec.get("key"))  # type: ignore[arg-type]
        if manifest is None or manifest.get("sha256") != rec.get("sha256"):
            raise CheckpointError(f"job {job_id}: the {which} checkpoint {rec.get('file')} is no longer in the "
                                  "checkpoint index (replaced by a newer one); try again")
        return Choice(manifest=manifest)
    if which not in LOADABLE:
        raise ValueError(f"which: expected 'best' or 'final', received {which!r}")
    return Choice(export=rec or {})  # empty: none yet (load_export says so; the fallback may still serve)


def fallback(which: str, status: dict[str, Any], index: dict[int, Any]) -> dict[str, Any] | None:
    """The resumable checkpoint that stands in for an export that is missing or fails its sha256 (a worker died
    between writing the file and recording it): the best epoch's for ``best``, else the newest one.

    >>> fallback("best", {"best_ckpt_key": "2000000"}, {1000000: {"k": 1}, 2000000: {"k": 2}})
    {'k': 2}
    """
    key = status.get("best_ckpt_key") if which == "best" else None
    if key not in (None, ""):
        return index.get(int(key))  # type: ignore[arg-type]
    return index[max(index)] if index else None


def load_job_model(spec: JobSpec, storage: Storage, job_id: str, status: dict[str, Any],
               index: Callable[[], dict[int, Any]], allowed: Sequence[str], which: str = "best") -> Any:
    """The job's ``which`` model, verified against its sha256 (see :func:`choose` and :func:`fallback`)."""
    choice = choose(job_id, which, status, index)
    if choice.manifest is not None:
        return load_checkpoint_model(spec, storage, job_id, choice.manifest, allowed)
    try:
        return load_export(spec, storage, job_id, choice.export or {}, allowed, which)
    except (CheckpointError, StorageError):
        manifest = fallback(which, status, index())
        if manifest is None:
            raise
        return load_checkpoint_model(spec, storage, job_id, manifest, allowed)


def load_export(spec: JobSpec, storage: Storage, job_id: str, rec: dict[str, Any], allowed: Sequence[str],
                which: str = "best") -> Any:
    """The model from a job's ``best`` (or ``final``) export record, verified against its recorded sha256."""
    import keras

    if not rec:
        raise StorageError(f"job {job_id}: no {which} checkpoint yet")
    key, name, suffix = fmt.export_key(job_id, rec)  # Keras insists on the suffix
    objs = custom_objects(spec.model.custom_objects, allowed)
    # Verified against the sha256 Redis recorded (a local copy of the object on object storage).
    with storage.local_file(key, rec["sha256"], suffix=suffix, what=f"{which} checkpoint {name}") as path:
        if rec.get("format") == "keras":
            return keras.saving.load_model(path, custom_objects=objs, safe_mode=True)
        model = build_model(spec, storage, allowed)
        with warnings.catch_warnings():
            # .weights.h5 also carries optimizer variables; a fresh optimizer has none yet, which Keras warns about.
            warnings.simplefilter("ignore", UserWarning)
            model.load_weights(path)
    return model


def load_checkpoint_model(spec: JobSpec, storage: Storage, job_id: str, manifest: dict[str, Any],
                          allowed: Sequence[str]) -> Any:
    """A model rebuilt from the spec with the weights (and, for a full-model job, the optimizer variables) of a
    committed resumable checkpoint, verified against its sha256: what ``best.keras`` / ``best.weights.h5`` hold."""
    data = fmt.read_checkpoint(storage, job_id, manifest)
    full = not spec.checkpoint.save_weights_only
    groups = fmt.unpack(data, f"checkpoint {manifest['file']}", only=None if full else "w")
    model = build_model(spec, storage, allowed)
    model.set_weights(groups["w"])
    opt = getattr(model, "optimizer", None)
    if full and opt is not None:
        if not opt.built:
            opt.build(model.trainable_variables)
        if len(opt.variables) == len(groups["o"]):
            for v, a in zip(opt.variables, groups["o"]):
                v.assign(a)
    return model
