"""The sections of a job spec (pydantic v2, every model ``extra="forbid"``, numbers finite and bounded); the whole
spec, :class:`jobs.contract.spec.JobSpec`, and its validation are in :mod:`jobs.contract.spec`.

>>> FitSpec.model_validate({"epochs": 5}).batch_size
32
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# Counts of batches, epochs and steps: past this nothing is meaningful (a billion steps of 1 ms is 11 days), and
# Keras/TensorFlow would overflow on what a float like 1e30 becomes.
MAX_COUNT = 10**9

Mode = Literal["auto", "min", "max"]
_SHA = r"^[0-9a-f]{64}$"


def _no_control_chars(v: str) -> str:
    """Names are printed by ``list``/``status``/``watch``/``logs``: refuse what a terminal would interpret
    (ESC sequences, OSC titles, carriage returns, bidi overrides), i.e. Unicode categories Cc, Cf, Zl and Zp."""
    for i, ch in enumerate(v):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise ValueError(f"control character {ch!r} at position {i} is not allowed (printable text only)")
    return v


PrintableName = Annotated[str, AfterValidator(_no_control_chars)]


class _Strict(BaseModel):
    # allow_inf_nan=False: inf, -inf and NaN are refused in every float field ("Input should be a finite number");
    # a threshold of -Infinity used to fail the job in the worker.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSpec(_Strict):
    """Where the compiled model comes from: a builder function or an inline Keras config."""

    builder: str | None = Field(None, description="'module:function' returning a compiled keras.Model.")
    builder_kwargs: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] | None = Field(None, description="Inline Keras model config (serialize_keras_object).")
    compile: dict[str, Any] | None = Field(None, description="Keras compile config (model.get_compile_config()).")
    initial_weights: str | None = Field(None, pattern=_SHA, description="sha256 of uploaded initial weights (.npz).")
    custom_objects: list[str] = Field(default_factory=list, description="'module:Name' custom Keras classes.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.builder is None) == (self.config is None):
            raise ValueError("model: give exactly one of 'builder' (module:function) or 'config' (inline Keras config)")
        if self.config is not None and self.compile is None:
            raise ValueError("model: an inline 'config' needs a 'compile' config (optimizer, loss, metrics)")
        return self


class DataSpec(_Strict):
    """Where the training data comes from: a loader function or arrays uploaded by the client."""

    loader: str | None = Field(
        None, description="'module:function' returning (x, y), (x, y, x_val, y_val) or a Dataset."
    )
    loader_kwargs: dict[str, Any] = Field(default_factory=dict)
    arrays: str | None = Field(
        None, pattern=_SHA,
        description="sha256 of an uploaded .npz: x, y (optionally sample_weight); dict/list inputs as x.d.NAME/x.l.I.")
    validation_arrays: str | None = Field(None, pattern=_SHA, description="sha256 of an uploaded .npz (x, y).")
    dataset: str | None = Field(None, pattern=_SHA, description="sha256 of a tf.data.Dataset saved by Dataset.save.")
    validation_dataset: str | None = Field(None, pattern=_SHA, description="sha256 of a saved validation Dataset.")

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if sum(v is not None for v in (self.loader, self.arrays, self.dataset)) != 1:
            raise ValueError("data: give exactly one of 'loader' (module:function), 'arrays' (uploaded .npz) or "
                             "'dataset' (uploaded tf.data.Dataset)")
        if self.validation_arrays is not None and self.validation_dataset is not None:
            raise ValueError("data: give at most one of 'validation_arrays' and 'validation_dataset'")
        return self

    @property
    def has_validation(self) -> bool | None:
        """True/False when known at submit; None for a loader (it may return validation data)."""
        if self.loader is not None:
            return None
        return self.validation_arrays is not None or self.validation_dataset is not None


class FitSpec(_Strict):
    """The arguments of ``model.fit`` that traind honours (same meaning as in Keras)."""

    epochs: int = Field(..., ge=1, le=MAX_COUNT)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    validation_split: float = Field(0.0, ge=0.0, lt=1.0)
    shuffle: bool = True
    seed: int = Field(0, ge=0, lt=2**31, description="Seeds weights and each epoch's shuffle (seed, epoch).")
    steps_per_epoch: int | None = Field(None, ge=1, le=MAX_COUNT, description="Batches per epoch (Keras' "
                                        "steps_per_epoch).")
    initial_epoch: int = Field(0, ge=0, le=MAX_COUNT,
                               description="Epoch at which to start training (0-based, as in Keras).")
    validation_freq: int = Field(1, ge=1, le=MAX_COUNT,
                                 description="Validate every N epochs (Keras' integer validation_freq).")
    validation_steps: int | None = Field(None, ge=1, le=MAX_COUNT, description="Validation batches per evaluation.")
    validation_batch_size: int | None = Field(None, ge=1, le=1_000_000)
    class_weight: dict[int, float] | None = Field(None, description="Class index -> loss weight (single output).")
    deterministic: bool = Field(False, description="Enable TF op determinism (bit-exact resume, slower).")

    @model_validator(mode="after")
    def _epochs(self) -> FitSpec:
        if self.initial_epoch >= self.epochs:
            raise ValueError(f"initial_epoch ({self.initial_epoch}) must be below epochs ({self.epochs}); "
                             "as in Keras, epochs is the index of the last epoch, not a count")
        return self


class CheckpointSpec(_Strict):
    """Keras ModelCheckpoint semantics plus retention."""

    monitor: PrintableName = "val_loss"
    mode: Mode = "auto"
    save_best_only: bool = True
    save_weights_only: bool = False
    initial_value_threshold: float | None = None
    keep_last: int = Field(2, ge=1, le=1000, description="Resumable checkpoints kept besides the best (>=1 spare).")
    save_freq: int | Literal["epoch"] = Field(
        "epoch", description="Also save a resumable step checkpoint every N batches (Keras' integer save_freq).")
    every_s: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto", description="Also save a resumable step checkpoint every N seconds; 'auto' (the default): an interval "
        "from the measured checkpoint stall and TRAIND_CHECKPOINT_MTBF_S (Young/Daly); null: at epoch ends only.")

    @model_validator(mode="after")
    def _freq(self) -> CheckpointSpec:
        if isinstance(self.save_freq, int) and not 1 <= self.save_freq <= MAX_COUNT:
            raise ValueError(f"save_freq: expected 'epoch' or a number of batches in 1..{MAX_COUNT}, received "
                             f"{self.save_freq}")
        return self

    @property
    def step_checkpoints(self) -> bool:
        return self.save_freq != "epoch" or self.every_s is not None

    @property
    def explicit_step_checkpoints(self) -> bool:
        """Step checkpoints the spec asked for (not the ``auto`` default)."""
        return self.save_freq != "epoch" or isinstance(self.every_s, (int, float))


class EarlyStoppingSpec(_Strict):
    """Keras EarlyStopping arguments."""

    monitor: PrintableName = "val_loss"
    patience: int = Field(0, ge=0, le=MAX_COUNT)
    min_delta: float = Field(0.0, ge=0.0)
    mode: Mode = "auto"
    baseline: float | None = None
    restore_best_weights: bool = False
    start_from_epoch: int = Field(0, ge=0, le=MAX_COUNT)


class ReduceLROnPlateauSpec(_Strict):
    """Keras ReduceLROnPlateau arguments."""

    monitor: PrintableName = "val_loss"
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    patience: int = Field(10, ge=0, le=MAX_COUNT)
    mode: Mode = "auto"
    min_delta: float = Field(1e-4, ge=0.0)
    cooldown: int = Field(0, ge=0, le=MAX_COUNT)
    min_lr: float = Field(0.0, ge=0.0)


class CSVLoggerSpec(_Strict):
    """Keras CSVLogger: one row per epoch, written to ``training.csv`` in the job's directory."""

    separator: str = Field(",", min_length=1, max_length=1)
    append: bool = False


class LRSchedulerSpec(_Strict):
    """Keras LearningRateScheduler with ``schedule(epoch, lr) -> lr`` from an allowlisted module."""

    schedule: str = Field(..., description="'module:function' taking (epoch, lr) and returning the new lr.")


class ResourcesSpec(_Strict):
    """Where the job runs."""

    device: Literal["cpu", "gpu"] = "cpu"
    gpus: int = Field(1, ge=1, le=64, description="Devices of one worker to train on (MirroredStrategy when > 1).")
    queue: str = Field("default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    priority: Literal["high", "default", "low"] = "default"
