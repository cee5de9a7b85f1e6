"""The job spec: what a user submits (pydantic v2, every model ``extra="forbid"``).

>>> spec = JobSpec.model_validate({
...     "name": "demo",
...     "model": {"builder": "examples.regression:build_model"},
...     "data": {"loader": "examples.regression:load_data"},
...     "fit": {"epochs": 5},
... })
>>> spec.checkpoint.monitor
'val_loss'
"""

from __future__ import annotations

import difflib
import json
import reprlib
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobs.contract.refs import imported_problem, ref_problem
from jobs.errors import LimitError, SpecError

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
    model_config = ConfigDict(extra="forbid")


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

    epochs: int = Field(..., ge=1)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    validation_split: float = Field(0.0, ge=0.0, lt=1.0)
    shuffle: bool = True
    seed: int = Field(0, ge=0, lt=2**31, description="Seeds weights and each epoch's shuffle (seed, epoch).")
    steps_per_epoch: int | None = Field(None, ge=1, description="Batches per epoch (Keras' steps_per_epoch).")
    initial_epoch: int = Field(0, ge=0, description="Epoch at which to start training (0-based, as in Keras).")
    validation_freq: int = Field(1, ge=1, description="Validate every N epochs (Keras' integer validation_freq).")
    validation_steps: int | None = Field(None, ge=1, description="Validation batches per evaluation.")
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
    every_s: float | None = Field(None, gt=0, description="Also save a resumable step checkpoint every N seconds.")

    @model_validator(mode="after")
    def _freq(self) -> CheckpointSpec:
        if isinstance(self.save_freq, int) and self.save_freq < 1:
            raise ValueError(f"save_freq: expected 'epoch' or a number of batches >= 1, received {self.save_freq}")
        return self

    @property
    def step_checkpoints(self) -> bool:
        return self.save_freq != "epoch" or self.every_s is not None


class EarlyStoppingSpec(_Strict):
    """Keras EarlyStopping arguments."""

    monitor: PrintableName = "val_loss"
    patience: int = Field(0, ge=0)
    min_delta: float = Field(0.0, ge=0.0)
    mode: Mode = "auto"
    baseline: float | None = None
    restore_best_weights: bool = False
    start_from_epoch: int = Field(0, ge=0)


class ReduceLROnPlateauSpec(_Strict):
    """Keras ReduceLROnPlateau arguments."""

    monitor: PrintableName = "val_loss"
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    patience: int = Field(10, ge=0)
    mode: Mode = "auto"
    min_delta: float = Field(1e-4, ge=0.0)
    cooldown: int = Field(0, ge=0)
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


class JobSpec(_Strict):
    """A complete training job."""

    name: PrintableName = Field(..., min_length=1, max_length=200)
    model: ModelSpec
    data: DataSpec
    fit: FitSpec
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    early_stopping: EarlyStoppingSpec | None = None
    lr_on_plateau: ReduceLROnPlateauSpec | None = None
    csv_logger: CSVLoggerSpec | None = None
    terminate_on_nan: bool = Field(False, description="Keras TerminateOnNaN: a NaN/inf loss fails the job.")
    lr_scheduler: LRSchedulerSpec | None = None
    resume_from: Literal["best", "latest"] = "best"
    max_restarts: int = Field(3, ge=0, le=1000)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="after")
    def _default_monitor(self) -> JobSpec:
        # ModelCheckpoint's default monitor is val_loss; a job known to have no validation data gets "loss" instead
        # (documented), while a val_* monitor the user wrote is refused by static_fit_problems.
        d = self.data
        validates = d.has_validation or (d.arrays is not None and self.fit.validation_split > 0)
        if d.loader is None and not validates and "monitor" not in self.checkpoint.model_fields_set:
            self.checkpoint.monitor = "loss"
            self.checkpoint.model_fields_set.discard("monitor")
        return self


_MODELS: dict[str, type[BaseModel]] = {
    "": JobSpec,
    "model": ModelSpec,
    "data": DataSpec,
    "fit": FitSpec,
    "checkpoint": CheckpointSpec,
    "early_stopping": EarlyStoppingSpec,
    "lr_on_plateau": ReduceLROnPlateauSpec,
    "csv_logger": CSVLoggerSpec,
    "lr_scheduler": LRSchedulerSpec,
    "resources": ResourcesSpec,
}


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<spec>"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 80, 80


def _shown(value: Any) -> str:
    """A short repr of a received value, safe for any input (deep nesting, ints too long to print)."""
    try:
        shown = _REPR.repr(value)
    except Exception:  # an int over 4300 digits cannot even be repr'd (nor can objects with a broken __repr__)
        shown = f"<{type(value).__name__} that cannot be shown>"
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _json_size(data: Any, limit: int | None) -> int:
    """Length of ``data`` as JSON, counted only up to just past ``limit`` (a YAML alias bomb is never expanded
    in full); raises SpecError for data that JSON cannot carry to the workers.
    """
    size = 0
    try:
        for chunk in json.JSONEncoder(default=str).iterencode(data):
            size += len(chunk)
            if limit is not None and size > limit:
                break
    except (TypeError, ValueError, RecursionError) as e:
        raise SpecError([
            f"<spec>: expected JSON-compatible data (string keys, integers under 4300 digits, modest nesting), "
            f"received data that cannot be encoded ({type(e).__name__}: {str(e)[:200]})"
        ]) from e
    return size


def _ref_problem(ref: object, allowed: list[str], what: str) -> str | None:
    """A refused reference: not a well-formed allowed ``module:name``, or a name the module only imported."""
    return ref_problem(ref, allowed, what) or imported_problem(str(ref), allowed, what)


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(err.get("loc", ()))
    where = _loc(loc)
    if err["type"] == "extra_forbidden":
        parent = str(loc[0]) if len(loc) > 1 else ""
        model = _MODELS.get(parent, JobSpec)
        valid = list(model.model_fields)
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"{where}: unknown field{hint} (valid fields: {', '.join(valid)})"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {msg}; received {_shown(err.get('input'))}"


def validate_spec(
    data: dict[str, Any],
    allowed_modules: list[str] | None = None,
    max_epochs: int | None = None,
    max_spec_bytes: int | None = None,
) -> JobSpec:
    """Validate a spec dict; raise :class:`SpecError` naming *every* problem.

    ``allowed_modules`` enforces the code allowlist (client at submit, worker again before import).
    """
    problems: list[str] = []
    if not isinstance(data, dict):
        raise SpecError([f"<spec>: expected a mapping, received {type(data).__name__}"])
    size = _json_size(data, max_spec_bytes)  # always: the spec travels to the workers as JSON
    if max_spec_bytes is not None and size > max_spec_bytes:
        raise LimitError([f"<spec>: at least {size} bytes as JSON exceeds TRAIND_MAX_SPEC_BYTES={max_spec_bytes}"])
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        problems.extend(_format_error(err) for err in e.errors())
    # The allowlist is checked on the raw data too, so one pass reports type errors and refused code together.
    if allowed_modules is not None:
        for section, field in (("model", "builder"), ("data", "loader"), ("lr_scheduler", "schedule")):
            ref = (data.get(section) or {}).get(field) if isinstance(data.get(section), dict) else None
            if ref is not None:
                p = _ref_problem(ref, allowed_modules, f"{section}.{field}")
                if p:
                    problems.append(p)
        customs = (data.get("model") or {}).get("custom_objects") if isinstance(data.get("model"), dict) else None
        for i, ref in enumerate(customs if isinstance(customs, list) else []):  # a non-list is a type error above
            p = _ref_problem(ref, allowed_modules, f"model.custom_objects.{i}")
            if p:
                problems.append(p)
    if spec is not None and max_epochs is not None and spec.fit.epochs > max_epochs:
        problems.append(f"fit.epochs: {spec.fit.epochs} exceeds TRAIND_MAX_EPOCHS={max_epochs}")
    if spec is not None:
        problems.extend(static_fit_problems(spec))
    if problems:
        raise SpecError(problems)
    assert spec is not None
    try:
        dumped = spec.model_dump(mode="json")  # the form stored in Redis
    except ValueError as e:  # e.g. a lone surrogate from a YAML/JSON '\ud800' escape: not encodable text
        raise SpecError([f"<spec>: expected valid Unicode text, received {type(e).__name__}: {str(e)[:200]}"]) from e
    if max_spec_bytes is not None:
        # Workers measure the stored form (defaults filled in): refuse here what they would refuse there.
        stored = _json_size(dumped, max_spec_bytes)
        if stored > max_spec_bytes:
            raise LimitError([f"<spec>: at least {stored} bytes as JSON once defaults are filled in exceeds "
                              f"TRAIND_MAX_SPEC_BYTES={max_spec_bytes}"])
    return spec


def monitors(spec: JobSpec) -> dict[str, str]:
    """Every ``monitor`` field of the spec: ``{"checkpoint.monitor": "val_loss", ...}``."""
    out = {"checkpoint.monitor": spec.checkpoint.monitor}
    if spec.early_stopping is not None:
        out["early_stopping.monitor"] = spec.early_stopping.monitor
    if spec.lr_on_plateau is not None:
        out["lr_on_plateau.monitor"] = spec.lr_on_plateau.monitor
    return out


def static_fit_problems(spec: JobSpec) -> list[str]:
    """What is wrong with the fit/data combination without building the model (monitor names are checked against
    the compiled model by :func:`jobs.keras.fitcheck.monitor_problems`)."""
    problems: list[str] = []
    d, f = spec.data, spec.fit
    validates = d.has_validation or (d.arrays is not None and f.validation_split > 0)
    if d.loader is None and not validates:
        for where, mon in monitors(spec).items():
            if mon.startswith("val_"):
                problems.append(
                    f"{where}: {mon!r} needs validation data, and this job has none; pass validation_data or "
                    f"validation_split, or monitor a training metric such as {mon.removeprefix('val_')!r}")
    if d.dataset is not None and spec.checkpoint.step_checkpoints:
        problems.append("checkpoint.save_freq/every_s: step checkpoints need array data (traind's own pipeline "
                        "resumes at the next batch); a Dataset job checkpoints at epoch ends")
    if d.dataset is not None and f.validation_split:
        problems.append("fit.validation_split: not supported with a Dataset (as in Keras); pass validation_data")
    if f.class_weight == {}:
        problems.append("fit.class_weight: expected a non-empty {class index: weight} mapping, received {}")
    if f.class_weight is not None and any(k < 0 for k in f.class_weight):
        problems.append(f"fit.class_weight: expected class indices >= 0, received {sorted(f.class_weight)}")
    return problems


def parse_spec_text(text: str, source: str = "<spec>") -> dict[str, Any]:
    """Parse YAML or JSON text (JSON is YAML) into a dict, with a clear error."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError([f"{source}: not valid YAML/JSON: {e}"]) from e
    except Exception as e:  # PyYAML also raises ValueError, AttributeError, RecursionError on odd input
        raise SpecError([f"{source}: not valid YAML/JSON: {type(e).__name__}: {str(e)[:200]}"]) from e
    if not isinstance(data, dict):
        raise SpecError([f"{source}: expected a mapping at the top level, received {type(data).__name__}"])
    return data


def load_spec_file(path: str | Path, **limits: Any) -> JobSpec:
    """Load and validate a YAML/JSON spec file; one larger than ``max_spec_bytes`` is refused before it is parsed
    (or even read past the limit: a FIFO or a growing file too)."""
    p = Path(path)
    max_bytes = limits.get("max_spec_bytes")
    try:
        with open(p, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as e:
        raise SpecError([f"{p}: cannot read spec file: {e}"]) from e
    if max_bytes is not None and len(data) > max_bytes:
        try:
            size = f"{p.stat().st_size} bytes"
        except OSError:
            size = "more bytes"
        raise LimitError([f"{p}: spec file of {size} exceeds TRAIND_MAX_SPEC_BYTES={max_bytes}; refused before "
                          "parsing"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([f"{p}: expected UTF-8 text, received undecodable bytes ({e})"]) from e
    return validate_spec(parse_spec_text(text, str(p)), **limits)


def load_stored_spec(text: str | None, **limits: Any) -> JobSpec:
    """The spec a job record carries (JSON), validated as at submit; its size is checked before it is parsed.

    >>> load_stored_spec('{"name": "x", "model": {"builder": "m:f"}, "data": {"loader": "m:g"}, "fit": {"epochs": 1}}'
    ...                  ).fit.epochs
    1
    """
    max_bytes = limits.get("max_spec_bytes")
    if text is None:
        raise SpecError(["<spec>: expected a mapping, received NoneType (the job record has no spec field)"])
    if max_bytes is not None and len(text) > max_bytes:  # characters <= bytes: a cheap lower bound
        raise LimitError([f"<spec>: stored spec of {len(text)} characters exceeds TRAIND_MAX_SPEC_BYTES={max_bytes}; "
                          "refused before parsing"])
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise SpecError([f"<spec>: stored spec is not valid JSON: {type(e).__name__}: {str(e)[:200]}"]) from e
    return validate_spec(data, **limits)
