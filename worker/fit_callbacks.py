"""The Keras callbacks a spec may ask for besides checkpointing/early stopping: CSVLogger (``training.csv`` in the
job's directory, consistent across resumes), TerminateOnNaN (a NaN/inf loss fails the job) and LearningRateScheduler
(a schedule from an allowlisted module).

>>> # cbs = extra_callbacks(spec, storage, job_id, start_epoch=3, allowed=["examples"])
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import keras

from jobs.errors import UserCodeError
from jobs.refs import resolve_ref
from jobs.spec import JobSpec
from jobs.storage import Storage

CSV_NAME = "training.csv"


class FailOnNaN(keras.callbacks.Callback):
    """Keras' TerminateOnNaN, except that the job then *fails* (Keras would return from fit with NaN weights): a
    retry would diverge the same way, and a job that "succeeded" with NaN weights would hide it."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise UserCodeError(f"TerminateOnNaN: loss became {float(loss)} at epoch {self.epoch + 1}, "
                                f"batch {batch + 1}; the job stops (a retry would diverge the same way)")


def csv_logger(spec: JobSpec, storage: Storage, job_id: str, start_epoch: int) -> keras.callbacks.CSVLogger:
    """Keras' own CSVLogger appending to the job's ``training.csv``, after dropping rows of epochs this attempt
    will redo (a resumed attempt continues the file; epochs are 0-based in it, as Keras writes them)."""
    assert spec.csv_logger is not None
    sep = spec.csv_logger.separator
    path = storage.job_dir(job_id) / CSV_NAME
    if path.exists():
        rows = list(csv.reader(io.StringIO(path.read_text()), delimiter=sep))
        keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < start_epoch]
        buf = io.StringIO()
        csv.writer(buf, delimiter=sep, lineterminator="\r\n").writerows(keep if len(keep) > 1 else [])
        storage.write_bytes_atomic(path, buf.getvalue().encode())
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    return keras.callbacks.CSVLogger(str(path), separator=sep, append=True)


def lr_scheduler(spec: JobSpec, allowed: Sequence[str]) -> keras.callbacks.LearningRateScheduler:
    assert spec.lr_scheduler is not None
    fn = resolve_ref(spec.lr_scheduler.schedule, allowed, "lr_scheduler.schedule")
    return keras.callbacks.LearningRateScheduler(fn)


def extra_callbacks(spec: JobSpec, storage: Storage, job_id: str, start_epoch: int,
                    allowed: Sequence[str]) -> list[keras.callbacks.Callback]:
    """The spec's optional Keras callbacks, built once per attempt (stateless across fit calls or file-backed)."""
    cbs: list[keras.callbacks.Callback] = []
    if spec.lr_scheduler is not None:
        cbs.append(lr_scheduler(spec, allowed))
    if spec.terminate_on_nan:
        cbs.append(FailOnNaN())
    if spec.csv_logger is not None:
        cbs.append(csv_logger(spec, storage, job_id, start_epoch))
    return cbs
