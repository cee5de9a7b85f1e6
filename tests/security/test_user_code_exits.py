"""Issue 8.1: job code cannot take its worker, nor `traind up`, down.

* Job code raising any ``BaseException`` (``SystemExit`` from argparse, ``KeyboardInterrupt``, ``GeneratorExit``)
  fails that job with the reason; the same worker takes the next job. The worker's own SIGINT still stops it.
* A job that really kills its worker (SIGKILL, as the OOM killer does) is requeued by the supervisor and fails after
  ``max_restarts``; `traind up` restarts the worker with backoff each time and keeps Redis and everything else up.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import redis

from jobs.client import Client
from jobs.errors import JobTimeoutError
from jobs.settings import ClientSettings
from tests.conftest import ALLOWED, Procs, log_of, wait_for
from tests.security.helpers import failed_with, good_spec, plant_job, record, run_burst

HOSTILE = f"{ALLOWED},tests.security.hostile"


def _hostile(name: str, builder: str, **kwargs: object) -> dict[str, object]:
    return good_spec(name, epochs=1, model={"builder": builder, "builder_kwargs": kwargs})


def test_base_exceptions_from_job_code_fail_only_their_job(r: redis.Redis, redis_url: str, storage_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One in-process burst: four jobs raise BaseExceptions, the fifth trains; the worker ends normally."""
    # argparse reads this process's argv: an unknown option makes it exit 2 under any test runner (pytest-xdist's
    # workers have an argv that argparse would accept, and fit_client would then start a real run and block).
    monkeypatch.setattr(sys, "argv", ["fit_client", "--not-an-option"])
    ids = {
        "argparse": plant_job(r, _hostile("argparse", "examples.fit_client:main")),  # the repro: exit 2
        "exit": plant_job(r, _hostile("exit", "tests.security.hostile:raise_base", kind="SystemExit", arg=7)),
        "kbd": plant_job(r, _hostile("kbd", "tests.security.hostile:raise_base", kind="KeyboardInterrupt")),
        "genexit": plant_job(r, _hostile("genexit", "tests.security.hostile:raise_base", kind="GeneratorExit")),
    }
    good = plant_job(r, good_spec("after", epochs=1))
    w = run_burst(redis_url, storage_dir, allowed_modules=HOSTILE.split(","))  # returns 0, or the test fails
    assert w.jobs_done == 5
    assert failed_with(r, ids["argparse"]) == "job code raised SystemExit: 2"
    assert failed_with(r, ids["exit"]) == "job code raised SystemExit: 7"
    assert failed_with(r, ids["kbd"]) == "job code raised KeyboardInterrupt: raised by job code"
    assert failed_with(r, ids["genexit"]) == "job code raised GeneratorExit: raised by job code"
    for jid in ids.values():
        rec = record(r, jid)
        assert rec["restarts"] == 0 and "Traceback" in (rec.get("traceback") or ""), rec  # once, no retry
    assert record(r, good)["state"] == "succeeded"


def test_worker_process_survives_job_exits_and_still_stops_on_its_own_sigint(
    redis_url: str, storage_dir: Path, procs: Procs
) -> None:
    """A real `traind worker`: jobs raising SystemExit / KeyboardInterrupt fail; then SIGINT (the worker's own
    signal) still makes it checkpoint the running job, hand it back (requeued) and exit 0."""
    env = {"TRAIND_ALLOWED_MODULES": HOSTILE}
    client = Client(settings=ClientSettings(redis_url=redis_url, storage_dir=storage_dir,
                                            allowed_modules=HOSTILE.split(",")))
    bad = [client.submit(_hostile("exit", "tests.security.hostile:raise_base", kind="SystemExit", arg=3)),
           client.submit(_hostile("kbd", "tests.security.hostile:raise_base", kind="KeyboardInterrupt"))]
    slow = client.submit(good_spec("slow", epochs=50, max_restarts=3, model={
        "builder": "tests.models:slow_regression", "builder_kwargs": {"batch_delay_s": 0.05}}))
    w = procs.worker(redis_url, storage_dir, env=env)
    wait_for(lambda: slow.status()["state"] == "running" and slow.status()["epoch"] >= 1 or w.poll() is not None,
             180, "the slow job to train an epoch")
    assert w.poll() is None, log_of(w)
    assert [b.status()["error"] for b in bad] == ["job code raised SystemExit: 3",
                                                  "job code raised KeyboardInterrupt: raised by job code"]
    w.send_signal(signal.SIGINT)
    assert w.wait(120) == 0, log_of(w)
    st = slow.status()
    assert st["state"] == "requeued" and st["preemptions"] == 1 and st["restarts"] == 0, st


@pytest.mark.timeout(900)  # four worker starts (TensorFlow imported each time) on a loaded 2-core machine
def test_poison_job_fails_after_max_restarts_and_traind_up_stays_up(
    tmp_path: Path, procs: Procs
) -> None:
    """`traind up`: a job that SIGKILLs its worker on every attempt (max_restarts=2: three deaths, which used to stop
    the whole stack, Redis included) fails with the reason; the restarted worker then trains the next job."""
    data = tmp_path / "data"
    env = {"TRAIND_ALLOWED_MODULES": HOSTILE, "TRAIND_LEASE_TTL_S": "2", "TRAIND_HEARTBEAT_INTERVAL_S": "0.4"}
    up = procs.traind("up", "--workers", "1", "--storage", str(data), "--grace-s", "5", env=env, name="up")
    url_file = tmp_path / "data.redis" / "url"
    wait_for(lambda: url_file.exists() or up.poll() is not None, 120, "the stack to start")
    assert up.poll() is None, log_of(up)
    url = url_file.read_text().strip()
    client = Client(settings=ClientSettings(redis_url=url, storage_dir=data, allowed_modules=HOSTILE.split(",")))
    poison = client.submit(good_spec("poison", epochs=1, max_restarts=2,
                                     model={"builder": "tests.security.hostile:kill_worker"}))
    try:
        final = poison.wait(timeout=800)
    except JobTimeoutError as e:
        worker_log = (data / "logs" / "worker-0.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{e}\n--- traind up:\n{log_of(up)}\n--- worker-0:\n{worker_log}") from e
    assert final["state"] == "failed", final
    assert final["error"] == "worker lost 3 times (max_restarts=2)", final
    assert up.poll() is None, log_of(up)
    out = log_of(up)
    assert out.count("worker-0 exited with code -9") >= 3, out  # restarted after every death
    assert "(3 quick exits in a row)" in out and "stopping the stack" not in out, out
    after = client.submit(good_spec("after-poison", epochs=1))
    assert after.wait(timeout=600)["state"] == "succeeded"
    assert redis.Redis.from_url(url).ping()
    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0, log_of(up)
