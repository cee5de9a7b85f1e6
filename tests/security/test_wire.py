"""Issue 5.1: nothing read from Redis is ever unpickled, and a bad message costs its own job, never the worker."""

from __future__ import annotations

import ast
import json
import pickle
import zlib
from pathlib import Path

import pytest
import redis
from rq import Queue

from jobs.client import Client
from jobs.contract import keys
from tests.security.helpers import (
    QUEUE,
    failed_with,
    good_spec,
    plant_job,
    plant_rq,
    record,
    rq_payload,
    run_burst,
)

ROOT = Path(__file__).resolve().parents[2]
NEVER_UNPICKLES = "traind never unpickles"


class Payload:
    """A classic pickle RCE: unpickling calls ``Path.touch(marker)``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (Path(self.path),))


def test_pickle_payload_is_armed(tmp_path: Path) -> None:
    """Control: the payload used below really runs code when unpickled (so its marker's absence means something)."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps([keys.RQ_FUNC, None, [Payload(control)], {}]))
    assert control.exists()


def test_bad_messages_fail_only_their_job_and_the_worker_serves_on(
    r: redis.Redis, redis_url: str, storage_dir: Path, client: Client, marker: Path,
    worker_log: pytest.LogCaptureFixture,
) -> None:
    """Pickles, garbage, wrong shapes, unknown jobs and corrupted specs, all in one burst before a good job."""
    expect: dict[str, list[str]] = {}  # job id -> substrings its user-visible error must contain

    def bad_message(label: str, data: bytes, *, compress: bool = False, expected: list[str]) -> None:
        jid = plant_job(r, good_spec(label), send_message=False)
        plant_rq(r, keys.rq_job_id(jid, 1), data, compress=compress)
        expect[jid] = ["malformed queue message", *expected]

    # A pickle planted through RQ's own API with its default (pickle) serializer, as `rq enqueue` would do.
    jid = plant_job(r, good_spec("rq-pickle"), send_message=False)
    Queue(QUEUE, connection=r).enqueue_call(func=keys.RQ_FUNC, args=[Payload(marker)],
                                            job_id=keys.rq_job_id(jid, 1))
    expect[jid] = ["malformed queue message", NEVER_UNPICKLES, "UnicodeDecodeError"]
    raw_pickle = pickle.dumps([keys.RQ_FUNC, None, [Payload(marker)], {}])
    bad_message("raw-pickle", raw_pickle, expected=[NEVER_UNPICKLES])
    bad_message("zlib-pickle", raw_pickle, compress=True, expected=[NEVER_UNPICKLES])
    bad_message("garbage", b"\x00\xff\xfegarbage\x80", expected=[NEVER_UNPICKLES])
    bad_message("zlib-garbage", b"\x00\xff\xfegarbage\x80", compress=True, expected=[NEVER_UNPICKLES])
    bad_message("not-rq-shape", json.dumps(["x"]).encode(), expected=[NEVER_UNPICKLES, "expected 4, got 1"])
    bad_message("one-arg", rq_payload(keys.RQ_FUNC, ["x"]),
                expected=[f"expected {keys.RQ_FUNC}(job_id, attempt), received {keys.RQ_FUNC}('x',)"])
    bad_message("other-func", rq_payload("os.system", ["touch /tmp/x", 1]),
                expected=[f"expected {keys.RQ_FUNC}(job_id, attempt), received os.system("])
    bad_message("args-not-list", rq_payload(keys.RQ_FUNC, {"job_id": "x"}), expected=["expected", "received"])
    jid = plant_job(r, good_spec("notanint"), send_message=False)
    plant_rq(r, keys.rq_job_id(jid, 1), rq_payload(keys.RQ_FUNC, [jid, "notanint"]))
    expect[jid] = ["malformed queue message", "attempt", "valid integer", "'notanint'"]
    jid = plant_job(r, good_spec("extra-args"), send_message=False)
    plant_rq(r, keys.rq_job_id(jid, 1), rq_payload(keys.RQ_FUNC, [jid, 1, "extra"]))
    expect[jid] = [f"expected {keys.RQ_FUNC}(job_id, attempt), received {keys.RQ_FUNC}('{jid}', 1, 'extra')"]

    # Well-formed messages whose job record is corrupted: the spec is re-validated by the worker.
    expect[plant_job(r, "{not json")] = ["invalid spec:", "Expecting property name"]
    expect[plant_job(r, "[1, 2]")] = ["invalid spec:", "<spec>: expected a mapping, received list"]
    bad = good_spec("bad", model={"builder": "os:system", "builder_kwargs": {"command": f"touch {marker}"}})
    bad["fit"]["epochs"] = 0
    expect[plant_job(r, bad)] = ["invalid spec:", "fit.epochs: Input should be greater than or equal to 1",
                                 "module 'os' is not allowed", "TRAIND_ALLOWED_MODULES"]
    jid = plant_job(r, good_spec("no-spec-field"))
    r.hdel(keys.job(jid), "spec")
    expect[jid] = ["invalid spec:", "expected a mapping, received NoneType"]

    # Messages naming no job at all: dropped (logged), nothing else happens.
    plant_rq(r, "nosuchjob-a1", rq_payload(keys.RQ_FUNC, ["nosuchjob", 1]))
    plant_rq(r, "orphan-garbage", b"\x80\x04garbage")
    r.rpush(f"rq:queue:{QUEUE}", "ghost-without-hash", b"\xff\xfe-not-utf8")

    good = client.submit(good_spec("good-after-the-bad"))
    run_burst(redis_url, storage_dir)

    for jid, substrings in expect.items():
        error = failed_with(r, jid)
        for s in substrings:
            assert s in error, f"job {record(r, jid)['name']}: {s!r} not in its error {error!r}"
    assert good.status()["state"] == "succeeded", good.status().get("error")
    assert not marker.exists(), marker.read_text()
    log = worker_log.text
    assert "dropping message for nosuchjob attempt 1: job 'nosuchjob' not found" in log
    assert "rejected message: unreadable RQ message 'orphan-garbage'" in log
    assert "worker loop error" not in log  # every bad message was handled inside step(), none escaped it
    assert r.llen(f"rq:queue:{QUEUE}") == 0
    assert not list(r.scan_iter("rq:job:*")), "rejected RQ job hashes must be deleted"


# -- static checks: no pickle anywhere in traind's own code -------------------------------------------------------
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
UNSAFE_NAMES = {"DefaultSerializer", "PickleSerializer", "enable_unsafe_deserialization", "unsafe_load", "full_load"}


def _traind_sources() -> list[Path]:
    files = [p for d in ("jobs", "worker", "daemon") for p in sorted((ROOT / d).rglob("*.py"))]
    assert any(p.parts[-2] == "jobs" for p in files) and any(p.parts[-2] == "worker" for p in files)
    return files


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _problems(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(root)
    out: list[str] = []
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PICKLE_MODULES:
            out.append(f"{where}: imports from {node.module}")
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in UNSAFE_NAMES:
                out.append(f"{where}: uses {name}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        base = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        allow_pickle = _kw(node, "allow_pickle")
        if allow_pickle is not None and not _is_const(allow_pickle, False):
            out.append(f"{where}: allow_pickle is not the constant False")
        if base in ("np", "numpy") and fname == "load" and not _is_const(allow_pickle, False):
            out.append(f"{where}: np.load without allow_pickle=False")
        if base == "yaml" and fname != "safe_load" and fname.endswith("load"):
            out.append(f"{where}: yaml.{fname} (only yaml.safe_load is allowed)")
        if fname in ("load_model", "deserialize_keras_object") and not _is_const(_kw(node, "safe_mode"), True):
            out.append(f"{where}: {fname} without safe_mode=True")
        rq_queue = fname == "Queue" and base not in ("asyncio", "queue", "multiprocessing")  # not RQ's Queue
        if (rq_queue or (base == "Job" and fname in ("fetch", "fetch_many", "create"))) and not (
            isinstance(_kw(node, "serializer"), ast.Name) and _kw(node, "serializer").id == "JSONSerializer"  # type: ignore[union-attr]
        ):
            out.append(f"{where}: rq {base + '.' if base else ''}{fname} without serializer=JSONSerializer")
        if fname in ("eval", "exec") and isinstance(func, ast.Name):
            out.append(f"{where}: calls {fname}")
    return out


def test_traind_code_never_unpickles() -> None:
    """No module in jobs/, worker/, daemon/ imports a pickle-family module, loads arrays with allow_pickle, uses
    yaml.load, loads Keras objects outside safe mode, or talks to RQ without the JSON serializer.
    """
    problems = [p for f in _traind_sources() for p in _problems(f)]
    assert not problems, "unsafe deserialization in traind code:\n" + "\n".join(problems)


def test_static_check_catches_violations(tmp_path: Path) -> None:
    """Control: the checker above does flag each pattern it is meant to flag."""
    bad = tmp_path / "jobs" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "import pickle\nfrom cloudpickle import dumps\nimport numpy as np\nimport yaml\nfrom rq import Queue\n"
        "np.load('x', allow_pickle=True)\nnp.load('y')\nyaml.load('a')\nQueue('q')\n"
        "keras.saving.load_model('m', safe_mode=False)\neval('1')\n"
    )
    found = "\n".join(_problems(bad, tmp_path))
    for s in ("imports pickle", "imports from cloudpickle", "allow_pickle is not the constant False",
              "np.load without allow_pickle=False", "yaml.load", "Queue without serializer", "load_model without",
              "calls eval"):
        assert s in found, f"{s!r} not flagged:\n{found}"


def test_zlib_and_plain_rq_data_are_both_read_as_json(r: redis.Redis) -> None:
    """RQ compresses job data; traind reads both forms, as JSON only (no silent fallback to pickle)."""
    from jobs.contract.queue import pop

    plant_rq(r, "abc-a1", rq_payload(keys.RQ_FUNC, ["abc", 1]), compress=True)
    plant_rq(r, "abd-a2", rq_payload(keys.RQ_FUNC, ["abd", 2]))
    plant_rq(r, "abe-a1", zlib.compress(pickle.dumps([keys.RQ_FUNC, None, ["abe", 1], {}])))
    got = [pop(r, [QUEUE], 0.1) for _ in range(3)]
    assert [(d.message.job_id, d.message.attempt) for d in got[:2] if d and d.message] == [("abc", 1), ("abd", 2)]
    assert got[2] is not None and got[2].message is None
    assert got[2].error is not None and NEVER_UNPICKLES in got[2].error
