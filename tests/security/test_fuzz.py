"""Issue 5.7: fuzzing (hypothesis, derandomized so CI is deterministic).

* specs: any dict / YAML / JSON text either validates or raises SpecError with a non-empty message per problem
  (never another exception), and whatever validates is accepted again by the worker in its stored form;
* queue: any bytes or JSON in an RQ job hash make ``jobs.contract.queue.pop`` return a Delivery (message xor error),
  never
  raise; the worker's ``step()`` survives them and never leaves a job running.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import random
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.contract import keys
from jobs.contract.ids import validate_job_id
from jobs.contract.queue import Delivery, pop, queue_key
from jobs.contract.spec import (
    CheckpointSpec,
    DataSpec,
    EarlyStoppingSpec,
    FitSpec,
    JobSpec,
    ModelSpec,
    ReduceLROnPlateauSpec,
    ResourcesSpec,
    parse_spec_text,
    validate_spec,
)
from jobs.errors import SpecError
from jobs.redis.store import JobStore
from tests.security.helpers import QUEUE, plant_job, rq_payload

ROOT = Path(__file__).resolve().parents[2]
# Hypothesis costs ~10-15 ms per generated spec here, so the structured fuzzers run a few hundred examples by default
# (SECURITY_FUZZ_EXAMPLES=5000 for a deep run) and a plain seeded mutation fuzzer below covers the volume.
FUZZ_EXAMPLES = int(os.environ.get("SECURITY_FUZZ_EXAMPLES", "200"))
PURE = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TEXT = settings(PURE, max_examples=max(FUZZ_EXAMPLES // 2, 1))  # PyYAML is pure Python here: half as many
REDIS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])
WORKER = settings(REDIS, max_examples=50)
LIMITS: dict[str, Any] = {"allowed_modules": ["examples"], "max_epochs": 1000, "max_spec_bytes": 4096}

# -- strategies --------------------------------------------------------------------------------------------------
EDGE_VALUES: list[Any] = [
    0, -1, 1, 2**31, 2**63, 10**400, 1e308, -0.0, float("nan"), float("inf"), float("-inf"),
    "", " ", "\x00", "\ud800", "é✓", "../../etc/passwd", "os:system", "examples.regression:build_model",
    "examples.regression:build_model\n", "A" * 300, "0" * 64, "auto", "min", "max", "gpu", "best", True, None, [], {},
]
SECTIONS = (JobSpec, ModelSpec, DataSpec, FitSpec, CheckpointSpec, EarlyStoppingSpec, ReduceLROnPlateauSpec,
            ResourcesSpec)
FIELD_NAMES = sorted({f for m in SECTIONS for f in m.model_fields} | {"__class__", "module", "class_name", "Epochs"})
huge_ints = st.integers(4300, 6000).map(lambda n: (-1) ** n * 10**n)  # too long for str(): built lazily, never repr'd
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.sampled_from(EDGE_VALUES),
)


def _nested(base: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        base,
        lambda kids: st.one_of(st.lists(kids, max_size=4),
                               st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8)), kids,
                                               max_size=4)),
        max_leaves=8,
    )


json_values = _nested(leaves)  # what json.dumps can write (queue payloads)
spec_values = _nested(st.one_of(leaves, huge_ints))  # plus what only a Python caller can pass (ints json refuses)
BASES: list[dict[str, Any]] = [
    {"name": "b", "model": {"builder": "examples.regression:build_model", "builder_kwargs": {"units": 4}},
     "data": {"loader": "examples.regression:load_data", "loader_kwargs": {"n": 200}},
     "fit": {"epochs": 2, "batch_size": 50, "validation_split": 0.25}},
    {"name": "a", "model": {"config": {"class_name": "Sequential", "config": {}}, "compile": {"loss": "mse"},
                            "initial_weights": "a" * 64, "custom_objects": ["examples.regression:build_model"]},
     "data": {"arrays": "b" * 64, "validation_arrays": "c" * 64}, "fit": {"epochs": 1, "seed": 3}},
    {"name": "full", "model": {"builder": "examples.regression:build_model"},
     "data": {"loader": "examples.regression:load_data"}, "fit": {"epochs": 3, "steps_per_epoch": 2},
     "checkpoint": {"monitor": "loss", "mode": "min", "save_best_only": False, "keep_last": 3},
     "early_stopping": {"patience": 2, "restore_best_weights": True, "baseline": 0.5},
     "lr_on_plateau": {"factor": 0.5, "patience": 1}, "resume_from": "latest", "max_restarts": 1,
     "resources": {"device": "cpu", "queue": "q-1", "priority": "high"}},
]


def _dicts(obj: Any) -> Iterator[dict[Any, Any]]:
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _dicts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _dicts(v)


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with 0-4 mutations: values replaced by garbage, keys deleted, unknown keys added."""
    spec = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, 4))):
        target = draw(st.sampled_from(list(_dicts(spec))))
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op != "add" and target:
            key = draw(st.sampled_from(list(target)))
            if op == "set":
                target[key] = draw(spec_values)
            else:
                del target[key]
        else:
            target[draw(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers()))] = draw(
                spec_values)
    return spec


specs = st.one_of(mutated_specs(), st.dictionaries(st.text(max_size=8), spec_values, max_size=6), spec_values)


def _dump(spec: Any, as_yaml: bool) -> str:
    try:
        return yaml.safe_dump(spec, allow_unicode=True) if as_yaml else json.dumps(spec)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):  # the test's own dumpers refuse it
        try:
            return repr(spec)
        except ValueError:  # holds an int too long to print
            return "name: x\nfit: {epochs: 1}\n"


@st.composite
def spec_texts(draw: st.DrawFn) -> str:
    text = _dump(draw(specs), draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):  # splice random characters in, or cut some out
        i = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:i] + draw(st.text(max_size=5)) + text[i:]
        else:
            text = text[:i] + text[i + draw(st.integers(1, 5)):]
    return text


texts = st.one_of(spec_texts(), st.text(max_size=200), st.sampled_from([
    "a: " + "9" * 5000, "a: -" + "1" * 4400, "[" * 400, "{" * 400 + "}" * 400,  # deeper: same error, PyYAML O(n^2)
    "a: !!python/object/apply:os.system ['true']",
    "a: !!binary aGVsbG8=", "a: 2001-13-45", "a: !!timestamp nope", "? [1, 2]\n: x", "- 1\n- 2", "42", "",
    "\x00", "a: &x [*x]", "name: !!float nan", "fit: {epochs: .inf}",
]))


# -- properties --------------------------------------------------------------------------------------------------
def _check_spec(data: Any) -> None:
    try:
        spec = validate_spec(data, **LIMITS)
    except SpecError as e:
        assert e.problems, "a SpecError without problems"
        for p in e.problems:
            assert isinstance(p, str) and p.strip() and ": " in p, f"unhelpful problem {p!r}"
        assert str(e).startswith(f"invalid job spec ({len(e.problems)} problem(s)):")
        return
    assert isinstance(spec, JobSpec)
    # What the client stores is what a worker re-validates: it must be accepted there too.
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    again = validate_spec(stored, **LIMITS)
    assert again.fit.epochs == spec.fit.epochs and again.name == spec.name


@PURE
@given(specs)
def test_fuzz_spec_dicts(data: Any) -> None:
    _check_spec(data)


@TEXT
@given(texts)
def test_fuzz_spec_texts(text: str) -> None:
    try:
        data = parse_spec_text(text, "fuzz.yaml")
    except SpecError as e:
        assert e.problems and all(p.startswith("fuzz.yaml: ") and len(p) > len("fuzz.yaml: ") for p in e.problems)
        return
    assert isinstance(data, dict)
    _check_spec(data)


POOL: list[Any] = [*EDGE_VALUES, 10**4400, -(10**5000), {"a": [1, {"b": None}]}, [[[[[]]]]], ["x"] * 5,
                   {"": 1}, {1: 2}, {"class_name": "Lambda", "module": "keras.layers"}, "a" * 5000]


def _random_mutation(rng: random.Random) -> Any:
    spec = copy.deepcopy(rng.choice(BASES))
    for _ in range(rng.randint(0, 4)):
        target = rng.choice(list(_dicts(spec)))
        op = rng.choice(["set", "set", "delete", "add"])
        if op != "add" and target:
            key = rng.choice(list(target))
            if op == "set":
                target[key] = copy.deepcopy(rng.choice(POOL))
            else:
                del target[key]
        else:
            target[rng.choice([*FIELD_NAMES, "x", 0])] = copy.deepcopy(rng.choice(POOL))
    return spec


def test_seeded_mutation_fuzz_thousands() -> None:
    """Volume without Hypothesis' per-example cost: 2000 seeded mutations of valid specs as dicts, one in ten
    also as YAML/JSON text with a splice (PyYAML is pure Python here: ~4 ms a document).
    """
    rng = random.Random(20261128)
    for i in range(2000):
        spec = _random_mutation(rng)
        _check_spec(spec)
        if i % 10:
            continue
        text = _dump(spec, rng.random() < 0.5)
        if rng.random() < 0.5 and text:
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice(["", "\x00", "{", "]", ": ", "\n  - ", "&a", "*a", "!!", "\ud800"]) + \
                text[i + rng.randint(0, 3):]
        try:
            data = parse_spec_text(text)
        except SpecError as e:
            assert e.problems and all(p.strip() for p in e.problems)
            continue
        _check_spec(data)


def test_the_base_specs_are_valid() -> None:
    """Control: the fuzzers start from valid specs, so they explore both sides of validity."""
    for base in BASES:
        validate_spec(copy.deepcopy(base), **LIMITS)
        assert parse_spec_text(yaml.safe_dump(base)) == base


# -- the queue -----------------------------------------------------------------------------------------------------
job_ids = st.one_of(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z"), st.text(max_size=70))
args = st.one_of(st.tuples(job_ids, st.one_of(st.integers(), st.text(max_size=5), st.floats(), st.none())).map(list),
                 st.lists(json_values, max_size=4), json_values)
payloads = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(rq_payload, st.one_of(st.just(keys.RQ_FUNC), st.text(max_size=20), json_values), args, json_values),
    st.builds(lambda a: pickle.dumps([keys.RQ_FUNC, None, a, {}]), args),
    st.builds(lambda v: json.dumps([keys.RQ_FUNC, None, v, {}], allow_nan=True).replace("NaN", "1e999").encode(),
              args),
)
rq_ids = st.one_of(st.builds(lambda j, a: f"{j}-a{a}", job_ids, st.integers(-3, 10**7)),
                   st.text(min_size=1, max_size=80), st.binary(min_size=1, max_size=40))
RQ_FIELDS = ["created_at", "status", "meta", "timeout", "dependency_ids", "origin", "enqueued_at", "result",
             "exc_info", "retry_intervals", "webhooks", "result_ttl", "ttl", "repeat_intervals", "started_at"]
extra_fields = st.dictionaries(st.sampled_from(RQ_FIELDS), st.one_of(st.binary(max_size=20), st.text(max_size=20)),
                               max_size=3)


def _plant(r: redis.Redis, rq_id: str | bytes, data: bytes, compress: bool, extra: dict[str, Any],
           with_hash: bool) -> None:
    rid = rq_id if isinstance(rq_id, bytes) else rq_id.encode("utf-8", "surrogatepass")
    if with_hash:
        r.hset(b"rq:job:" + rid, mapping={"data": zlib.compress(data) if compress else data, **extra})
    r.rpush(queue_key(QUEUE), rid)


def test_fuzz_pop_never_raises(r: redis.Redis) -> None:
    @REDIS
    @given(rq_id=rq_ids, data=payloads, compress=st.booleans(), extra=extra_fields, with_hash=st.integers(0, 9))
    def one(rq_id: str | bytes, data: bytes, compress: bool, extra: dict[str, Any], with_hash: int) -> None:
        r.flushdb()
        _plant(r, rq_id, data, compress, extra, with_hash > 0)
        d = pop(r, [QUEUE], 0.05)
        assert isinstance(d, Delivery)
        assert (d.message is None) != (d.error is None), d
        if d.message is not None:
            assert validate_job_id(d.message.job_id) == d.message.job_id and 1 <= d.message.attempt <= 1_000_000
        else:
            assert d.error and repr(d.rq_id) in d.error
        assert r.llen(queue_key(QUEUE)) == 0

    one()


@pytest.mark.slow
def test_fuzz_worker_step_survives(r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    """The worker's step() on fuzzed messages: never raises; the job it may name ends failed or stays queued."""
    from tests.security.helpers import make_worker

    w = make_worker(redis_url, storage_dir)
    spec_texts_ = st.one_of(st.text(max_size=50), st.builds(json.dumps, json_values), st.just("[" * 3000))

    @WORKER
    @given(data=payloads, compress=st.booleans(), extra=extra_fields, spec=spec_texts_,
           target=st.sampled_from(["job", "job-data", "other"]))
    def one(data: bytes, compress: bool, extra: dict[str, Any], spec: str, target: str) -> None:
        r.flushdb()
        jid = plant_job(r, spec, job_id="fuzzjob", send_message=False)
        if target == "job":  # a well-formed message for the job: its corrupted spec must fail it
            _plant(r, keys.rq_job_id(jid, 1), rq_payload(keys.RQ_FUNC, [jid, 1]), compress, extra, True)
        else:
            _plant(r, keys.rq_job_id(jid, 1) if target == "job-data" else "other-a1", data, compress, extra, True)
        assert w.step() is True
        state = JobStore(r).get(jid, with_history=False)["state"]
        assert state in ("failed", "queued"), f"job left {state}"
        if target == "job":
            assert state == "failed"

    one()


# -- optional: atheris ---------------------------------------------------------------------------------------------
def test_atheris_spec_fuzz() -> None:
    """Coverage-guided fuzzing of parse_spec_text + validate_spec for a few thousand runs, when atheris exists."""
    pytest.importorskip("atheris")
    harness = textwrap.dedent("""
        import sys, atheris
        with atheris.instrument_imports():
            from jobs.errors import SpecError
            from jobs.contract.spec import parse_spec_text, validate_spec
        def one(data):
            text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(4096)
            try:
                validate_spec(parse_spec_text(text), allowed_modules=["examples"], max_spec_bytes=4096)
            except SpecError:
                pass
        atheris.Setup([sys.argv[0], "-runs=3000", "-seed=1"], one)
        atheris.Fuzz()
    """)
    out = subprocess.run([sys.executable, "-c", harness], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


def test_floats_in_edge_values_are_what_they_claim() -> None:
    """Control for the strategies: the edge values include non-finite floats and ints too long to print."""
    assert any(isinstance(v, float) and math.isnan(v) for v in EDGE_VALUES)
    with pytest.raises(ValueError):
        str(10**4400)
