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

from jobs.contract.refs import resolve_ref
from jobs.contract.spec import JobSpec
from jobs.errors import UserCodeError
from jobs.storage.base import Storage, job_key

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


class JobCSVLogger(keras.callbacks.Callback):
    """Keras' CSVLogger format (``epoch`` 0-based, then the sorted log keys, ``val_`` columns added when the first
    epoch has none, ``NA`` for missing values) written to the job's ``training.csv`` in storage after every epoch.

    The whole file is republished each epoch (atomic on every backend); a resumed attempt keeps the rows of the
    epochs before its start and replaces the ones it redoes.
    """

    def __init__(self, storage: Storage, job_id: str, separator: str, start_epoch: int) -> None:
        super().__init__()
        self.storage, self.key, self.sep = storage, job_key(job_id, CSV_NAME), separator
        self.header: list[str] | None = None
        self.rows: list[list[str]] = []
        try:
            text = storage.read_bytes(self.key).decode()
        except FileNotFoundError:
            return
        rows = list(csv.reader(io.StringIO(text), delimiter=separator))
        if rows:
            self.header = rows[0]
            self.rows = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < start_epoch]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.header is None:
            keys = sorted(logs)
            if keys and not any(k.startswith("val_") for k in keys):
                keys += [f"val_{k}" for k in keys]
            self.header = ["epoch", *keys]
        self.rows.append([str(epoch), *(_cell(logs.get(k, "NA")) for k in self.header[1:])])
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=self.sep)  # the excel dialect, as Keras' CSVLogger
        w.writerow(self.header)
        w.writerows(self.rows)
        self.storage.put_bytes(self.key, buf.getvalue().encode())


def _cell(v: Any) -> str:
    if isinstance(v, str):
        return v
    try:
        return str(float(v))
    except (TypeError, ValueError):
        return str(v)


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
        cbs.append(JobCSVLogger(storage, job_id, spec.csv_logger.separator, start_epoch))
    return cbs

