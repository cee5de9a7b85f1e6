"""Issue 8.2, 8.7 (submit side), 8.8, 8.10: what is refused at submit, at the worker, or before a worker starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.errors import ConfigError, SpecError
from jobs.settings import ClientSettings
from tests.conftest import ROOT
from tests.security.helpers import failed_with, good_spec, make_worker, plant_job, plant_rq, rq_payload, run_burst

NOTHING_RECORDED = "nothing may be recorded or queued for a refused spec"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def _nothing_recorded(r: redis.Redis) -> None:
    assert r.zcard(keys.JOBS_INDEX) == 0 and not list(r.scan_iter("rq:queue:*")), NOTHING_RECORDED


# -- 8.2: the allowlist ---------------------------------------------------------------------------------------------
def test_default_allowlist_is_empty(r: redis.Redis, redis_url: str, storage_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAIND_ALLOWED_MODULES")
    assert ClientSettings().allowed_modules == []
    with pytest.raises(SpecError) as ei:
        Client(redis_url=redis_url, storage=storage_dir).submit(good_spec("default-allowlist"))
    assert ("model.builder: module 'examples.regression' is not allowed: TRAIND_ALLOWED_MODULES is empty (the "
            "default); set it to your package") in str(ei.value)
    _nothing_recorded(r)
    res = _cli("submit", str(ROOT / "examples" / "regression.yaml"), "--redis-url", redis_url,
               "--storage", str(storage_dir))
    assert res.returncode == 2 and "TRAIND_ALLOWED_MODULES is empty (the default)" in res.stderr, res.stderr
    _nothing_recorded(r)


def test_imported_module_attribute_is_refused_at_submit(r: redis.Redis, redis_url: str, storage_dir: Path,
                                                         tmp_path: Path) -> None:
    """``examples.regression:np`` (numpy, imported there) is refused at submit, in a fresh CLI process (decided from
    the module's syntax tree: nothing is imported) and in this process (examples.regression already imported)."""
    spec = tmp_path / "np.yaml"
    spec.write_text("name: np\nmodel: {builder: 'examples.regression:np'}\n"
                    "data: {loader: 'examples.regression:load_data'}\nfit: {epochs: 1}\n")
    res = _cli("submit", str(spec), "--redis-url", redis_url, "--storage", str(storage_dir),
               env={"TRAIND_ALLOWED_MODULES": "examples"})
    assert res.returncode == 2, res.stderr
    assert ("model.builder: examples.regression:np is imported into examples.regression from module 'numpy', not "
            "defined there") in res.stderr, res.stderr
    assert "expected a function or class defined in an allowed module" in res.stderr
    import examples.regression  # noqa: F401 - the in-process path asks the imported object

    with pytest.raises(SpecError, match=r"examples.regression:np is defined in module None, not under the allowed"):
        Client(redis_url=redis_url, storage=storage_dir).submit(good_spec("np", model={
            "builder": "examples.regression:np"}))
    _nothing_recorded(r)


# -- 8.7 (submit side): names a terminal would interpret ------------------------------------------------------------
@pytest.mark.parametrize(("where", "value"), [
    ("name", "\x1b[2Jwiped"),
    ("name", "title\x1b]0;pwned\x07"),
    ("name", "evil\u202etxt.exe"),
    ("checkpoint.monitor", "val_loss\r\x1b[1A"),
    ("early_stopping.monitor", "\x9bval_loss"),
    ("lr_on_plateau.monitor", "val_loss\x00"),
])
def test_control_characters_in_names_are_refused(where: str, value: str, client: Client, r: redis.Redis) -> None:
    spec = good_spec("x")
    if where == "name":
        spec["name"] = value
    else:
        section, field = where.split(".")
        spec[section] = {field: value}
    with pytest.raises(SpecError) as ei:
        client.submit(spec)
    bad = next(ch for ch in value if not ch.isprintable())
    assert f"{where}: control character {bad!r} at position {value.index(bad)} is not allowed" in str(ei.value)
    _nothing_recorded(r)


def test_control_characters_planted_in_redis_fail_the_job(r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    jid = plant_job(r, good_spec("\x1b[2Jplanted"))
    run_burst(redis_url, storage_dir)
    assert "name: control character '\\x1b' at position 0 is not allowed" in failed_with(r, jid)


# -- 8.8: sizes before parsing ----------------------------------------------------------------------------------------
def test_spec_file_size_is_checked_before_parsing(r: redis.Redis, redis_url: str, storage_dir: Path,
                                                   tmp_path: Path) -> None:
    """A 3 MB file of unbalanced brackets: refused for its size, never handed to the YAML parser (which would have
    spent seconds and hundreds of MB on it before saying it is invalid)."""
    big = tmp_path / "big.yaml"
    big.write_text("[" * 3_000_000)
    res = _cli("submit", str(big), "--redis-url", redis_url, "--storage", str(storage_dir),
               env={"TRAIND_ALLOWED_MODULES": "examples", "TRAIND_MAX_SPEC_BYTES": "4096"})
    assert res.returncode == 2, res.stderr
    assert (f"{big}: spec file of 3000000 bytes exceeds TRAIND_MAX_SPEC_BYTES=4096; refused before parsing"
            in res.stderr), res.stderr
    assert "YAML" not in res.stderr and "Traceback" not in res.stderr
    _nothing_recorded(r)


def test_stored_spec_size_is_checked_before_json_parsing(r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    jid = plant_job(r, "[" * 100_000)
    run_burst(redis_url, storage_dir, max_spec_bytes=4096)
    assert failed_with(r, jid) == ("invalid spec: invalid job spec (1 problem(s)):\n  - <spec>: stored spec of 100000 "
                                   "characters exceeds TRAIND_MAX_SPEC_BYTES=4096; refused before parsing")


# -- 8.10: strict message types, keras version -----------------------------------------------------------------------
@pytest.mark.parametrize("attempt", ["1", True, 1.0])
def test_message_attempt_is_not_coerced(attempt: object, r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    jid = plant_job(r, good_spec("coerced"), send_message=False)
    plant_rq(r, keys.rq_job_id(jid, 1), rq_payload(keys.RQ_FUNC, [jid, attempt]))
    run_burst(redis_url, storage_dir)
    error = failed_with(r, jid)
    assert error.startswith("malformed queue message: malformed RQ message") and "attempt" in error, error
    assert "Input should be a valid integer" in error and f"input_value={attempt!r}" in error, error


def test_worker_refuses_to_start_on_old_keras(redis_url: str, storage_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    monkeypatch.setattr(keras, "__version__", "3.11.3")
    with pytest.raises(ConfigError) as ei:
        make_worker(redis_url, storage_dir)
    assert str(ei.value).startswith("keras 3.11.3 is installed; traind workers need keras>=3.12 (safe-mode")
    monkeypatch.setattr(keras, "__version__", "3.12.0")
    make_worker(redis_url, storage_dir)  # the minimum itself is fine
