"""The job spec: what a user submits (pydantic v2, every model ``extra="forbid"``), its validation naming every
problem, and loading it from a file or a job record. The sections are in :mod:`jobs.contract.sections`.

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
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator

from jobs.alerts.urls import NOTIFY_MAX, URL_MAX, shape_problem
from jobs.contract.refs import imported_problem, ref_problem
from jobs.contract.sections import (
    CheckpointSpec,
    CSVLoggerSpec,
    DataSpec,
    EarlyStoppingSpec,
    FitSpec,
    LRSchedulerSpec,
    Mode,
    ModelSpec,
    PrintableName,
    ReduceLROnPlateauSpec,
    ResourcesSpec,
    _Strict,
)
from jobs.errors import LimitError, SpecError

__all__ = [  # the sections are part of the spec's API (imported from here since before they had their module)
    "JobSpec", "load_spec_file", "load_stored_spec", "monitors", "parse_spec_text", "static_fit_problems",
    "validate_spec", "CheckpointSpec", "CSVLoggerSpec", "DataSpec", "EarlyStoppingSpec", "FitSpec", "LRSchedulerSpec",
    "Mode", "ModelSpec", "PrintableName", "ReduceLROnPlateauSpec", "ResourcesSpec",
]


def _notify_shape(url: str) -> str:
    if bad := shape_problem(url):
        raise ValueError(bad)
    return url


# An Apprise URL (jobs/alerts): bounded and shaped here, checked by Apprise at submit (validate_spec's check_notify)
NotifyURL = Annotated[str, Field(max_length=URL_MAX), AfterValidator(_notify_shape)]


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
    resume_from: Literal["auto", "best", "latest"] = Field(
        "auto", description="The checkpoint a new attempt resumes from; auto: the latest when step checkpoints are "
        "on (the default), else the best.")
    progress_timeout_s: float | None = Field(None, gt=0, le=7 * 86400, description="Hung when no batch finished "
                                             "this long (default: the worker's, derived from the job's batch times).")
    max_restarts: int = Field(3, ge=0, le=1000)
    preemptible: bool = Field(True, description="Whether a supervisor may preempt this job (checkpoint at the next "
                              "batch, back to the queue, resumed later at that batch) for a waiting job of higher "
                              "priority; false opts out.")
    notify: list[NotifyURL] = Field(default_factory=list, max_length=NOTIFY_MAX, description="Apprise URLs this "
                                    "job's alerts go to (failed, succeeded, hung, preempted, lost_worker), besides "
                                    "TRAIND_NOTIFY; stored and shown with their secrets masked.")

    @property
    def resume_policy(self) -> str:
        """``best`` or ``latest``: ``resume_from`` with ``auto`` resolved."""
        if self.resume_from != "auto":
            return self.resume_from
        return "latest" if self.checkpoint.step_checkpoints else "best"
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
    if (fast := _plain_json_size(data)) is not None:
        return fast
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


_PLAIN_NODES = 5000  # a spec this small, with no container reached twice, is encoded in one call of the C encoder


def _plain_json_size(data: Any) -> int | None:
    """``_json_size`` in one C-encoder call for a small tree (no container reached twice, so no alias bomb can
    expand); None for anything else (the chunked count decides). The chunked pure-Python count was most of
    ``submit_many``'s time (bench.scale)."""
    seen: set[int] = set()
    stack, nodes = [data], 0
    while stack:
        v = stack.pop()
        nodes += 1
        t = type(v)
        if t is dict or t is list:
            if nodes > _PLAIN_NODES or id(v) in seen:
                return None
            seen.add(id(v))
            stack.extend(v.values() if t is dict else v)
        elif t is int and not -10**100 < v < 10**100:
            return None  # an int over 4300 digits: the chunked path reports it
    try:
        return len(json.dumps(data, default=str))
    except (TypeError, ValueError, RecursionError):
        return None  # the chunked path raises the SpecError that names it


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
    if loc and loc[0] == "notify":  # a notify URL may carry a password or token: never quoted
        return f"{where}: {msg}"
    return f"{where}: {msg}; received {_shown(err.get('input'))}"


def validate_spec(
    data: dict[str, Any],
    allowed_modules: list[str] | None = None,
    max_epochs: int | None = None,
    max_spec_bytes: int | None = None,
    check_notify: bool = False,
) -> JobSpec:
    """Validate a spec dict; raise :class:`SpecError` naming *every* problem.

    ``allowed_modules`` enforces the code allowlist (client at submit, worker again before import); ``check_notify``
    has Apprise read each ``notify`` URL (at submit: workers never send alerts, and see them masked).
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
    if check_notify and isinstance(data.get("notify"), list):
        from jobs.alerts.urls import url_problems  # Apprise loads only for a spec with notify URLs
        problems.extend(url_problems(data["notify"], shapes=False))
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
