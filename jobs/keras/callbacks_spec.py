"""Turn the Keras callbacks a user already passes to ``model.fit`` into spec sections (no code crosses Redis).

>>> callbacks_to_spec([])
{}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobs.errors import SpecError

# Why each refused Keras callback is refused (anything not listed and not converted is refused generically).
REFUSED = {
    "BackupAndRestore": "traind already checkpoints and resumes every job (see the spec's checkpoint section)",
    "ProgbarLogger": "traind publishes progress itself (traind watch / JobHandle.status)",
    "RemoteMonitor": "traind publishes every epoch's metrics to Redis (JobHandle.history)",
    "SwapEMAWeights": "not supported by traind yet",
}


def _f(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _tensorboard_problems(cb: Any) -> list[str]:
    """Every job writes per-epoch TensorBoard scalars (all metrics, learning rate) and its events under
    ``<storage>/jobs/<id>/tensorboard``; settings asking for more than that are refused, not ignored."""
    out = []
    if int(getattr(cb, "histogram_freq", 0) or 0):
        out.append(f"TensorBoard: histogram_freq={cb.histogram_freq}; traind writes per-epoch scalars only "
                   "(expected 0)")
    if int(getattr(cb, "embeddings_freq", 0) or 0):
        out.append(f"TensorBoard: embeddings_freq={cb.embeddings_freq}; expected 0")
    if getattr(cb, "write_images", False):
        out.append("TensorBoard: write_images=True; expected False")
    if getattr(cb, "update_freq", "epoch") not in ("epoch", None):
        out.append(f"TensorBoard: update_freq={cb.update_freq!r}; traind writes once per epoch (expected 'epoch')")
    if getattr(cb, "_stop_batch", 0):  # Keras keeps profile_batch as (_start_batch, _stop_batch)
        out.append(f"TensorBoard: profile_batch=({cb._start_batch}, {cb._stop_batch}); profiling a remote worker "
                   "is not supported (expected 0)")
    return out


def callbacks_to_spec(callbacks: list[Any], allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """ModelCheckpoint -> ``checkpoint``, EarlyStopping -> ``early_stopping``, ReduceLROnPlateau -> ``lr_on_plateau``,
    CSVLogger -> ``csv_logger``, TerminateOnNaN -> ``terminate_on_nan``, LearningRateScheduler -> ``lr_scheduler``
    (its schedule must be a function in an allowlisted module), TensorBoard -> the job's own TensorBoard logs (always
    written; options beyond per-epoch scalars are refused); any other callback is refused with the reason.
    """
    from jobs.keras.fitcheck import ref_of

    out: dict[str, Any] = {}
    problems: list[str] = []
    for cb in callbacks:
        kind = type(cb).__name__
        if kind == "ModelCheckpoint":
            out["checkpoint"] = {
                "monitor": cb.monitor,
                "mode": getattr(cb, "mode", "auto"),
                "save_best_only": bool(cb.save_best_only),
                "save_weights_only": bool(cb.save_weights_only),
            }
            if getattr(cb, "best", None) is not None:
                out["checkpoint"]["initial_value_threshold"] = _f(cb.best)
            if getattr(cb, "save_freq", "epoch") != "epoch":
                out["checkpoint"]["save_freq"] = int(cb.save_freq)  # step checkpoints with exact resume
        elif kind == "EarlyStopping":
            out["early_stopping"] = {
                "monitor": cb.monitor,
                "patience": int(cb.patience),
                "min_delta": abs(_f(cb.min_delta)),
                "mode": getattr(cb, "mode", "auto"),
                "baseline": None if cb.baseline is None else _f(cb.baseline),
                "restore_best_weights": bool(cb.restore_best_weights),
                "start_from_epoch": int(getattr(cb, "start_from_epoch", 0)),
            }
        elif kind == "ReduceLROnPlateau":
            out["lr_on_plateau"] = {
                "monitor": cb.monitor,
                "factor": _f(cb.factor),
                "patience": int(cb.patience),
                "mode": getattr(cb, "mode", "auto"),
                "min_delta": abs(_f(cb.min_delta)),
                "cooldown": int(cb.cooldown),
                "min_lr": _f(cb.min_lr),
            }
        elif kind == "CSVLogger":
            # The file goes to the job's directory (training.csv): a client path means nothing on a worker.
            out["csv_logger"] = {"separator": str(cb.sep), "append": bool(cb.append)}
        elif kind == "TerminateOnNaN":
            out["terminate_on_nan"] = True
        elif kind == "LearningRateScheduler":
            ref, problem = ref_of(cb.schedule, allowed or [], "LearningRateScheduler.schedule")
            if problem and allowed is not None:
                problems.append(problem)
            else:
                out["lr_scheduler"] = {"schedule": ref}
        elif kind == "History":
            continue  # traind records the history itself (JobHandle.history), epoch by epoch
        elif kind == "TensorBoard":
            problems += _tensorboard_problems(cb)  # supported settings map to the job's own TensorBoard logs
        elif kind in REFUSED:
            problems.append(f"callbacks: {kind} is refused: {REFUSED[kind]}")
        else:
            problems.append(
                f"callbacks: {kind} cannot be sent to a worker (no code crosses Redis); expected ModelCheckpoint, "
                "EarlyStopping, ReduceLROnPlateau, CSVLogger, TerminateOnNaN or LearningRateScheduler"
            )
    if problems:
        raise SpecError(problems)
    return out
