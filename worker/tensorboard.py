"""TensorBoard event files per job, written by a Keras callback in the worker.

``<storage>/jobs/<id>/tensorboard/<name>-<short id>/`` (the run's name in TensorBoard; a local/NFS directory, or
objects uploaded after each epoch) gets, per
finished epoch, one scalar per metric (``loss``, ``val_loss``, every
compiled metric, ``learning_rate``, ``time_s``) and the epoch's events as text, so ``tensorboard --logdir
<storage>/jobs`` shows every run side by side.

The values are read back from the job's history in Redis (the record every other view shows) right after the
trainer wrote them. A resumed attempt first rewrites the whole curve from that history into a fresh file and only
then deletes the older files: redone epochs replace their entries (as history does), so each epoch appears once.

>>> # model.fit(..., callbacks=[..., EpochRecorder(...), TensorBoardLogger(ledger, storage)])
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras

from jobs.storage.base import Storage
from worker.ledger import AttemptLedger

log = logging.getLogger("traind.worker")
SUBDIR = "tensorboard"


def tensorboard_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/{SUBDIR}"


def run_name(name: bytes | str | None, job_id: str) -> str:
    """``<name>-<short id>``: the run TensorBoard lists (a directory name: other characters become ``-``).

    >>> run_name("mnist classifier/v2", "1a2428e0c8c9fa2a7a343")
    'mnist-classifier-v2-1a2428e0'
    """
    text = name.decode(errors="replace") if isinstance(name, bytes) else (name or "")
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.")[:64]
    return f"{slug}-{job_id[:8]}" if slug else job_id[:8]


class TensorBoardLogger(keras.callbacks.Callback):
    """Per-epoch scalars and event text for one attempt; best effort (a full disk never fails training)."""

    def __init__(self, ledger: AttemptLedger, storage: Storage) -> None:
        super().__init__()
        self.ledger, self.job_id, self.attempt = ledger, ledger.job_id, ledger.attempt
        self.storage = storage
        self.prefix = tensorboard_prefix(self.job_id)
        # A local (or NFS) storage is written in place; an object store gets the files uploaded after each flush.
        local = storage.is_local
        self.root = storage.job_dir(self.job_id) / SUBDIR if local else Path(tempfile.mkdtemp(prefix="traind-tb-"))
        self.run = self.job_id[:8]  # the run's directory, `<name>-<short id>` once the name is read (_start)
        self.writer: Any = None
        self.last_event_ts = 0
        self.disabled = False

    # -- keras hooks -----------------------------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.writer is None and not self.disabled:
            self._guard(self._start)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.writer is not None:
            self._guard(lambda: self._write_epoch(epoch + 1))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.writer is not None:
            self._guard(self._final_events)

    def close(self) -> None:
        if self.writer is not None:
            self._guard(self.writer.close)
            self._guard(self._upload)
            self.writer = None
        if not self.storage.is_local:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------------------------------
    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # TensorBoard logs are a view; training and its record go on
            log.warning("job %s: TensorBoard logging disabled for this attempt: %s: %s", self.job_id,
                        type(e).__name__, e)
            self.disabled = True
            self.writer = None

    def _start(self) -> None:
        import tensorflow as tf

        self.run = run_name(self.ledger.record().get("name"), self.job_id)
        old = sorted(self.root.rglob("events.out.tfevents.*"))  # earlier attempts' files (any run directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        old_keys = [] if self.storage.is_local else self.storage.list_keys(self.prefix)  # type: ignore[attr-defined]
        self.writer = tf.summary.create_file_writer(str(self.dir), filename_suffix=f".a{self.attempt}")
        # Replay what Redis holds (a resumed attempt: epochs before its checkpoint), then drop older files.
        for entry in self.ledger.history():
            self._scalars(int(entry["epoch"]), entry)
        events = self.ledger.events()
        if events:
            self.last_event_ts = max(int(e.get("ts", 0)) for e in events)
            start = max((int(h["epoch"]) for h in self.ledger.history()), default=0)
            self._text(start, events)
        self._flush()
        for f in old:
            f.unlink(missing_ok=True)
        for k in old_keys:
            self.storage.delete(k)

    @property
    def dir(self) -> Path:
        return self.root / self.run

    def _flush(self) -> None:
        self.writer.flush()
        self._upload()

    def _upload(self) -> None:
        if not self.storage.is_local:
            for f in self.dir.glob("events.out.tfevents.*"):
                self.storage.put_local_file(f"{self.prefix}/{self.run}/{f.name}", f)

    def _write_epoch(self, epoch: int) -> None:
        entry = self.ledger.history_entry(epoch)
        if entry is None:  # not recorded (fenced off or stopping): write nothing Redis does not hold
            return
        self._scalars(epoch, entry)
        self._new_events(epoch)
        self._flush()

    def _final_events(self) -> None:
        hist = self.ledger.history()
        self._new_events(max((int(h["epoch"]) for h in hist), default=0))
        self._flush()

    def _new_events(self, step: int) -> None:
        fresh = [e for e in self.ledger.events(-50) if int(e.get("ts", 0)) > self.last_event_ts]
        if fresh:
            self.last_event_ts = max(int(e["ts"]) for e in fresh)
            self._text(step, fresh)

    def _scalars(self, epoch: int, entry: dict[str, Any]) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        # Classic scalar records (simple_value), what every reader knows: TensorBoard's scalars plugin and
        # EventAccumulator(...).Scalars(), which sees nothing in a tensor-valued record.
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in sorted(entry.items())
                  if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if values:
            with self.writer.as_default():
                tf.summary.experimental.write_raw_pb(summary_pb2.Summary(value=values).SerializeToString(), step=epoch)

    def _text(self, step: int, events: list[dict[str, Any]]) -> None:
        import tensorflow as tf

        lines = [f"[{e.get('level', 'info')}] {e.get('msg', '')}" for e in events]
        with self.writer.as_default():
            tf.summary.write("events", tf.constant("  \n".join(lines)), step=step, metadata=_metadata("text"))


def _metadata(plugin: str) -> Any:
    """TensorBoard plugin metadata, written with TensorFlow's core ``tf.summary.write``.

    ``tf.summary.scalar``/``text`` live in the ``tensorboard`` package, which tensorflow-cpu does not pull in;
    these are the same records ``tf.summary.text`` writes (plugin ``text``), so ``tensorboard --logdir``
    reads them as usual.
    """
    from tensorflow.core.framework import summary_pb2

    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = plugin
    md.data_class = summary_pb2.DATA_CLASS_TENSOR
    return md
