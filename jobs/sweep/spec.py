"""The sweep file: a job spec, a search space of dotted paths into it, an objective, a sampler, a pruner, a budget.

Every problem is reported at once (as for job specs): unknown fields, paths that are not in the job spec, bad
ranges, and values at the ends of a range that the job spec itself would refuse.

>>> sweep, job = validate_sweep({
...     "name": "lr", "job": {"name": "j", "model": {"builder": "examples.regression:build_model",
...     "builder_kwargs": {"learning_rate": 0.01}}, "data": {"loader": "examples.regression:load_data"},
...     "fit": {"epochs": 3}},
...     "space": {"model.builder_kwargs.learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}},
...     "trials": 4})
>>> sweep.objective_metric(job), sweep.direction(job)
('val_loss', 'minimize')
>>> trial_spec(job, {"model.builder_kwargs.learning_rate": 0.05}, "lr-t0")["model"]["builder_kwargs"]
{'learning_rate': 0.05}
"""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobs.contract.spec import JobSpec, PrintableName, parse_spec_text, validate_spec
from jobs.errors import SpecError

Scalar = str | int | float | bool | None
SAMPLERS = ("random", "grid", "tpe")
PRUNERS = ("none", "median", "successive_halving", "hyperband")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Strict):
    """A float in [low, high], optionally on a log scale or a grid of ``step``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Strict):
    """An integer in [low, high] (both included), every ``step``-th, optionally on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self


class CategoricalParam(_Strict):
    """One of ``choices`` (strings, numbers, booleans or null)."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(..., min_length=1, max_length=1000)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    problems = []
    if not (math.isfinite(low) and math.isfinite(high)):
        problems.append("low and high must be finite numbers")
    elif low >= high:
        problems.append(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        problems.append(f"log: true needs low > 0, received low={low}")
    if log and step is not None:
        problems.append("log and step cannot be combined (Optuna samples a log range continuously)")
    if problems:
        raise ValueError("; ".join(problems))


class Objective(_Strict):
    """The metric to optimise (a key of the job's per-epoch history) and its direction."""

    metric: PrintableName | None = Field(None, description="Default: the job's checkpoint.monitor.")
    mode: Literal["auto", "min", "max"] = "auto"


class SamplerSpec(_Strict):
    type: Literal["random", "grid", "tpe"] = "tpe"
    seed: int | None = Field(None, ge=0, lt=2**32)


class PrunerSpec(_Strict):
    type: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    min_resource: int = Field(1, ge=1, description="Epochs before the first pruning decision (SH/hyperband).")
    reduction_factor: int = Field(3, ge=2, le=100, description="SH/hyperband: keep 1 in reduction_factor.")
    n_startup_trials: int = Field(5, ge=0, description="median: trials completed before it prunes.")
    n_warmup_steps: int = Field(0, ge=0, description="median: epochs of a trial before it can be pruned.")


class SweepSpec(_Strict):
    """A sweep file. ``spec`` (a path) or ``job`` (inline) is the job every trial starts from."""

    name: PrintableName = Field(..., min_length=1, max_length=200)
    spec: str | None = Field(None, description="Path of a job spec file (relative: to the sweep file, else cwd).")
    job: dict[str, Any] | None = Field(None, description="The job spec inline.")
    objective: Objective = Field(default_factory=Objective)
    space: dict[str, Param] = Field(..., min_length=1, max_length=64)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    trials: int = Field(..., ge=1, le=10_000)
    parallel: int = Field(1, ge=1, le=1000, description="Trials in flight at once.")

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        # `sampler: tpe` and `pruner: hyperband` are the common forms; the mappings take options.
        if isinstance(data, dict):
            data = dict(data)
            for key in ("sampler", "pruner"):
                if isinstance(data.get(key), str):
                    data[key] = {"type": data[key]}
        return data

    @model_validator(mode="after")
    def _one_job(self) -> SweepSpec:
        if (self.spec is None) == (self.job is None):
            raise ValueError("give exactly one of 'spec' (a job spec file) or 'job' (the job spec inline)")
        return self

    def objective_metric(self, job: JobSpec) -> str:
        return self.objective.metric or job.checkpoint.monitor

    def direction(self, job: JobSpec) -> Literal["minimize", "maximize"]:
        """Keras' rule for ``auto`` (as ModelCheckpoint): accuracy-like metrics are maximised."""
        mode = self.objective.mode
        if mode == "auto":
            metric = self.objective_metric(job)
            if metric == job.checkpoint.monitor and job.checkpoint.mode != "auto":
                mode = job.checkpoint.mode
            else:
                mode = "max" if ("acc" in metric or metric.startswith("fmeasure") or "auc" in metric) else "min"
        return "maximize" if mode == "max" else "minimize"

    def grid(self) -> dict[str, list[Scalar]]:
        """Every point of the space per path (the grid sampler's search space); ValueError for a continuous one."""
        out: dict[str, list[Scalar]] = {}
        for path, p in self.space.items():
            if isinstance(p, CategoricalParam):
                out[path] = list(p.choices)
            elif isinstance(p, IntParam):
                out[path] = list(range(p.low, p.high + 1, p.step))
            elif p.step is not None:
                n = int(math.floor((p.high - p.low) / p.step + 1e-9))
                out[path] = [round(p.low + i * p.step, 12) for i in range(n + 1)]
            else:
                raise ValueError(f"space.{path}: the grid sampler needs choices, an int range or a float step")
        return out


def _get_path(data: dict[str, Any], path: str) -> tuple[bool, Any]:
    cur: Any = data
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts (the path exists: checked by :func:`validate_sweep`)."""
    *parents, leaf = path.split(".")
    cur = data
    for part in parents:
        cur = cur[part]
    cur[leaf] = value


def trial_spec(job: JobSpec, params: dict[str, Any], name: str) -> dict[str, Any]:
    """The job spec of one trial: the sweep's job with ``params`` set at their paths, named ``name``, resuming from
    its latest checkpoint (a trial whose worker dies redoes at most the epoch in progress)."""
    data = job.model_dump(mode="json")
    for path, value in params.items():
        set_path(data, path, value)
    data["name"] = name[:200]
    data["resume_from"] = "latest"
    return data


def _ends(p: FloatParam | IntParam | CategoricalParam) -> list[Scalar]:
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    return [p.low, p.high]


def _job_data(raw: dict[str, Any], base_dir: Path | None, limits: dict[str, Any]) -> tuple[dict[str, Any] | None,
                                                                                           list[str]]:
    """The job spec dict the sweep names, or its problems (``spec: ...`` / ``job.<field>: ...``)."""
    if isinstance(raw.get("job"), dict):
        return raw["job"], []
    ref = raw.get("spec")
    if not isinstance(ref, str):
        return None, []
    p = Path(ref)
    candidates = [p] if p.is_absolute() else [*([base_dir / p] if base_dir else []), Path.cwd() / p]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        return None, [f"spec: job spec file {ref!r} not found (looked in {', '.join(str(c) for c in candidates)})"]
    max_bytes = limits.get("max_spec_bytes") or 1_000_000
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        return None, [f"spec: cannot read {path}: {e}"]
    if len(data) > max_bytes:
        return None, [f"spec: {path} exceeds {max_bytes} bytes"]
    try:
        return parse_spec_text(data.decode("utf-8", errors="replace"), f"spec ({path})"), []
    except SpecError as e:
        return None, e.problems


def validate_sweep(raw: Any, base_dir: Path | None = None, **limits: Any) -> tuple[SweepSpec, JobSpec]:
    """Validate a sweep (a parsed YAML/JSON mapping); raise :class:`SpecError` naming every problem.

    ``limits`` are :func:`jobs.contract.spec.validate_spec`'s (allowed_modules, max_epochs, max_spec_bytes); the
    sweep's own job spec and every value at the ends of each range are validated with them.
    """
    if not isinstance(raw, dict):
        raise SpecError([f"<sweep>: expected a mapping, received {type(raw).__name__}"])
    problems: list[str] = []
    sweep: SweepSpec | None = None
    try:
        sweep = SweepSpec.model_validate(raw)
    except ValidationError as e:
        problems += [_sweep_error(err) for err in e.errors()]
    data, load_problems = _job_data(raw, base_dir, limits)
    problems += load_problems
    job: JobSpec | None = None
    where = "job" if isinstance(raw.get("job"), dict) else "spec"
    if data is not None:
        try:
            job = validate_spec(data, **limits)
        except SpecError as e:
            problems += [f"{where}: {p}" for p in e.problems]
    if job is not None:
        problems += _space_problems(raw.get("space"), job, limits)
    elif data is not None:  # the job spec has problems of its own: still name the paths that cannot be in it
        problems += _unknown_paths(raw.get("space"), data)
    if sweep is not None and job is not None:
        problems += _budget_problems(sweep, job)
    if problems:
        raise SpecError(problems)
    assert sweep is not None and job is not None
    return sweep, job


def _sweep_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("float", "int", "categorical")) or "<sweep>"
    if err["type"] == "extra_forbidden":
        loc_t = tuple(err.get("loc", ()))
        valid = list(_FIELDS.get(loc_t[0] if len(loc_t) > 1 else "", SweepSpec.model_fields))
        near = difflib.get_close_matches(str(loc_t[-1]), valid, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"{loc}: unknown field{hint} (valid fields: {', '.join(valid)})"
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}; received {str(err.get('input'))[:80]}"


def _unknown_paths(space: Any, data: dict[str, Any]) -> list[str]:
    """Paths neither in the (invalid) job spec as written nor fields of its sections (defaults)."""
    from jobs.contract.spec import _MODELS

    out = []
    for path in space if isinstance(space, dict) else {}:
        parts = str(path).split(".")
        model = _MODELS.get(parts[0]) if len(parts) == 2 else None
        if not _get_path(data, str(path))[0] and not (model is not None and parts[1] in model.model_fields):
            out.append(f"space.{path}: not a field of the job spec (set it in the job spec first, with a default "
                       "value)")
    return out


_FIELDS = {"objective": Objective.model_fields, "sampler": SamplerSpec.model_fields,
           "pruner": PrunerSpec.model_fields}


def _space_problems(space: Any, job: JobSpec, limits: dict[str, Any]) -> list[str]:
    """Paths not in the job spec, and range ends the job spec refuses (e.g. ``fit.batch_size`` low: 0)."""
    if not isinstance(space, dict):
        return []
    dumped = job.model_dump(mode="json")
    problems = []
    for path, p in space.items():
        found, _ = _get_path(dumped, str(path))
        if not found:
            parent = str(path).rpartition(".")[0]
            pfound, pval = _get_path(dumped, parent) if parent else (True, dumped)
            near = f"; fields there: {', '.join(sorted(pval))[:200]}" if pfound and isinstance(pval, dict) else ""
            problems.append(f"space.{path}: not a field of the job spec (set it in the job spec first, with a "
                            f"default value){near}")
            continue
        try:
            param = SweepSpec.model_validate({"name": "x", "job": {}, "space": {path: p}, "trials": 1}).space[path]
        except ValidationError:
            continue  # reported by the sweep's own validation
        for value in _ends(param):
            trial = copy.deepcopy(dumped)
            set_path(trial, str(path), value)
            try:
                validate_spec(trial, **limits)
            except SpecError as e:
                problems += [f"space.{path}: the value {value!r} makes the job spec invalid: {q}" for q in e.problems]
    return problems


def _budget_problems(sweep: SweepSpec, job: JobSpec) -> list[str]:
    problems = []
    if sweep.sampler.type == "grid":
        try:
            size = math.prod(len(v) for v in sweep.grid().values())
        except ValueError as e:
            problems.append(str(e))
        else:
            if sweep.trials > size:
                problems.append(f"trials: {sweep.trials} exceeds the grid's {size} points")
    if sweep.pruner.type in ("successive_halving", "hyperband") and sweep.pruner.min_resource >= job.fit.epochs:
        problems.append(f"pruner.min_resource: {sweep.pruner.min_resource} must be below the job's fit.epochs "
                        f"({job.fit.epochs}), or nothing can be pruned")
    return problems


def load_sweep_file(path: str | Path, **limits: Any) -> tuple[SweepSpec, JobSpec]:
    """Read, parse and validate a sweep file (YAML or JSON); relative ``spec:`` paths are looked up next to it."""
    p = Path(path)
    max_bytes = limits.get("max_spec_bytes") or 1_000_000
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise SpecError([f"{p}: cannot read sweep file: {e}"]) from e
    if len(data) > max_bytes:
        raise SpecError([f"{p}: sweep file exceeds {max_bytes} bytes"])
    raw = parse_spec_text(data.decode("utf-8", errors="replace"), str(p))
    return validate_sweep(raw, p.resolve().parent, **limits)
