"""The ``traind`` CLI in-process (no worker, no TensorFlow): submit, status, list, logs, cancel, watch, up."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from daemon import render
from daemon.cli import main
from jobs.client import Client
from jobs.contract import keys
from jobs.contract.states import JobState
from testkit.cluster import free_port
from tests.conftest import ROOT, Procs, log_of, wait_for

QUEUE = keys.rq_queue_name("default", "cpu", "default")

GOOD = {
    "name": "reg",
    "model": {"builder": "examples.regression:build_model"},
    "data": {"loader": "examples.regression:load_data"},
    "fit": {"epochs": 7},
}


def write_spec(tmp_path: Path, data: dict[str, Any], name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture()
def cli(redis_url: str, storage_dir: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``traind ARGS --redis-url URL --storage DIR``; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main([*args, "--redis-url", redis_url, "--storage", str(storage_dir)])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def submit(cli: Any, tmp_path: Path, **over: Any) -> str:
    # --no-check: these tests stay without TensorFlow, and some plant monitors the builder never logs on purpose
    rc, out, err = cli("submit", str(write_spec(tmp_path, {**GOOD, **over})), "--json", "--no-check")
    assert rc == 0, err
    return json.loads(out)["id"]


def test_bad_spec_lists_every_problem_and_enqueues_nothing(cli: Any, tmp_path: Path, r: redis.Redis) -> None:
    bad = {
        "name": "bad",
        "model": {"builder": "os:system"},  # outside the allowlist
        "data": {"loader": "examples.regression:load_data"},
        "fit": {"epochs": 0, "batchsize": 10},  # out of range; typo of batch_size
    }
    rc, out, err = cli("submit", str(write_spec(tmp_path, bad)))
    assert rc == 2 and out == ""
    assert "nothing was submitted" in err
    assert "model.builder: module 'os' is not allowed" in err
    assert "fit.epochs" in err and "greater than or equal to 1" in err
    assert "fit.batchsize: unknown field; did you mean 'batch_size'?" in err
    assert err.count("\n  - ") == 3
    assert r.zcard(keys.JOBS_INDEX) == 0
    assert r.keys("rq:queue:*") == [] and r.llen("rq:queue:" + QUEUE) == 0


def test_unreadable_spec_file(cli: Any, tmp_path: Path) -> None:
    rc, _, err = cli("submit", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "cannot read spec file" in err
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed")
    rc, _, err = cli("submit", str(p))
    assert rc == 2 and "not valid YAML/JSON" in err


def test_submit_enqueues_and_key_is_idempotent(cli: Any, tmp_path: Path, r: redis.Redis) -> None:
    spec = str(write_spec(tmp_path, GOOD))
    rc, out, _ = cli("submit", spec)
    assert rc == 0
    job_id = out.strip()
    assert r.lrange("rq:queue:" + QUEUE, 0, -1) == [keys.rq_job_id(job_id, 1).encode()]
    rc1, out1, _ = cli("submit", spec, "--key", "k-1", "--json")
    rc2, out2, _ = cli("submit", spec, "--key", "k-1", "--json")
    assert rc1 == rc2 == 0 and json.loads(out1)["id"] == json.loads(out2)["id"]
    assert r.zcard(keys.JOBS_INDEX) == 2


def test_status_json_and_human(cli: Any, tmp_path: Path) -> None:
    job_id = submit(cli, tmp_path)
    rc, out, _ = cli("status", job_id, "--json")
    assert rc == 0
    st = json.loads(out)
    for field in ("id", "name", "state", "epoch", "epochs", "restarts", "best_epoch", "best_value", "stopped_early",
                  "worker", "history"):
        assert field in st, field
    assert (st["id"], st["name"], st["state"], st["epoch"], st["epochs"]) == (job_id, "reg", "queued", 0, 7)
    assert st["history"] == [] and st["stopped_early"] is False and st["best_value"] is None
    assert "token" not in st and "spec" not in st and st["monitor"] == "val_loss"
    rc, out, _ = cli("status", job_id)
    rows = dict(line.split(None, 1) if not line.startswith("epochs done") else ("epochs done", line[11:].strip())
                for line in out.splitlines())
    assert rc == 0 and rows["job"] == job_id and rows["state"] == "queued" and rows["epochs done"] == "0/7"
    rc, out, _ = cli("status", job_id, "--spec")
    assert rc == 0 and json.loads(out)["fit"]["epochs"] == 7


def test_status_of_unknown_or_invalid_job(cli: Any) -> None:
    rc, _, err = cli("status", "nosuchjob")
    assert rc == 1 and "not found" in err
    rc, _, err = cli("status", "../etc")
    assert rc == 2 and "invalid job id" in err


def test_list_json_table_and_state_filter(cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path) -> None:
    first = submit(cli, tmp_path, name="first")
    second = submit(cli, tmp_path, name="second")
    Client(redis_url=redis_url, storage=storage_dir).job(first).cancel()
    rc, out, _ = cli("list", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [j["id"] for j in rows] == [second, first]  # newest first
    assert {j["id"]: j["state"] for j in rows} == {first: "cancelled", second: "queued"}
    rc, out, _ = cli("list", "--state", "queued", "--json")
    assert [j["id"] for j in json.loads(out)] == [second]
    rc, out, err = cli("list", "--limit", "1")
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["ID", "NAME", "OWNER", "STATE", "EPOCHS DONE", "BEST (EPOCH)", "RESTARTS",
                                           "WORKER", "UPDATED"]
    handle = lines[1].split()[0]  # the job's short handle, which every command takes
    assert len(lines) == 2 and second.startswith(handle) and len(handle) >= 8 and "0/7" in lines[1]
    rc, out, _ = cli("status", handle, "--json")
    assert rc == 0 and json.loads(out)["id"] == second
    assert "EPOCHS DONE: finished/total epochs" in err and "BEST (EPOCH)" in err  # the legend, off the table's stdout
    rc, out, _ = cli("list", "--state", "running")
    assert rc == 0 and out.strip() == "no jobs in state running"
    from jobs.contract.owners import default_owner  # issue 24: the owner filter (submitted as the OS user)

    rc, out, _ = cli("list", "--owner", default_owner(), "--state", "queued", "--json")
    assert rc == 0 and [j["id"] for j in json.loads(out)] == [second] and json.loads(out)[0]["owner"] == default_owner()
    rc, out, _ = cli("list", "--owner", "nobody-else")
    assert rc == 0 and out.strip() == "no jobs of nobody-else"


def test_logs_and_cancel_of_a_queued_job(cli: Any, tmp_path: Path) -> None:
    job_id = submit(cli, tmp_path)
    rc, out, _ = cli("logs", job_id)
    assert rc == 0 and "INFO    submitted" in out
    rc, out, _ = cli("cancel", job_id)
    assert rc == 0 and f"cancelled {job_id} (was queued)" in out
    rc, out, _ = cli("status", job_id, "--json")
    assert json.loads(out)["state"] == "cancelled"
    rc, out, _ = cli("cancel", job_id)
    assert rc == 0 and "already cancelled" in out
    rc, out, _ = cli("logs", job_id, "--follow")  # terminal: returns at once
    assert rc == 0 and "cancelled before it started" in out
    rc, _, err = cli("cancel", "nosuchjob")
    assert rc == 1 and "not found" in err


def test_log_tail_returns_each_event_once_across_trimming(r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    from daemon.watch import EventTail
    from jobs.contract.events import EventKind
    from jobs.redis.store import JobStore

    store = JobStore(r, events_max=10)
    job = Client(redis_url=redis_url, storage=storage_dir).submit(GOOD)
    for i in range(12):
        store.add_event(job.id, EventKind.NOTE, f"e{i}")
    tail = EventTail(store, job.id)
    assert [e["msg"] for e in tail.poll()] == [f"e{i}" for i in range(2, 12)]
    assert tail.poll() == []
    for i in range(12, 15):
        store.add_event(job.id, EventKind.NOTE, f"e{i}")  # the list stays at 10: its front is trimmed
    assert [e["msg"] for e in tail.poll()] == ["e12", "e13", "e14"]


def test_cancel_of_a_running_job_only_flags_it(cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path) -> None:
    job_id = submit(cli, tmp_path)
    store = Client(redis_url=redis_url, storage=storage_dir).store
    store.transition(job_id, JobState.RUNNING, attempt=1, fields={"token": "t", "worker": "w"}, lease_ttl_ms=5000)
    rc, out, _ = cli("cancel", job_id)
    assert rc == 0 and "cancel requested" in out
    st = store.get(job_id)
    assert st["state"] == "running" and st["cancel_requested"] is True


def test_watch_prints_progress_and_exits_by_outcome(cli: Any, tmp_path: Path, redis_url: str,
                                                    storage_dir: Path) -> None:
    store = Client(redis_url=redis_url, storage=storage_dir).store
    job_id = submit(cli, tmp_path)
    store.transition(job_id, JobState.RUNNING, attempt=1, fields={"token": "t", "worker": "w"}, lease_ttl_ms=5000)
    store.fenced_update(job_id, "t", fields={"epoch": 2, "best_epoch": 2, "best_value": 0.25},
                        history_set={1: {"epoch": 1, "loss": 0.9, "val_loss": 0.5},
                                     2: {"epoch": 2, "loss": 0.4, "val_loss": 0.25}})
    store.transition(job_id, JobState.SUCCEEDED, token="t", fields={"stopped_early": True})
    rc, out, _ = cli("watch", job_id)
    assert rc == 0
    assert "epoch 2/7 [" in out and "loss=0.4 val_loss=0.25 best val_loss=0.25 @ epoch 2  succeeded" in out
    assert f"job {job_id} succeeded: 2/7 epochs (stopped early)" in out
    other = submit(cli, tmp_path)
    cli("cancel", other)
    rc, out, _ = cli("watch", other)
    assert rc == 1 and "cancelled" in out


def test_progress_line_shows_batches_within_an_epoch() -> None:
    st = {"state": "running", "epoch": 3, "epochs": 10, "batch": 5, "steps": 10, "metrics": {"loss": 0.3},
          "best_value": 0.2, "best_epoch": 3, "restarts": 1}
    line = render.progress_line(st, {"epoch": 3, "loss": 0.35, "val_loss": 0.2}, width=10)
    # the bar is the whole run (3.5 of 10 epochs: it never goes back when an epoch ends); the text has the batches
    assert line == ("epoch 4/10 [####......] 5/10 loss=0.3 val_loss=0.2 best val_loss=0.2 @ epoch 3  running "
                    "(restarts 1)")


def test_progress_never_shows_epoch_0_and_its_bar_never_goes_back() -> None:
    """Issue 22 item 6: a queued or starting job is at epoch 1/N, not 0/N; the bar only grows through epochs."""
    assert render.progress_line({"state": "queued", "epoch": 0, "epochs": 200}).startswith("epoch 1/200 ")
    assert render.progress_line({"state": "running", "epoch": 0, "epochs": 200}).startswith("epoch 1/200 ")
    fractions = []
    for epoch in range(3):
        for batch in (1, 2, 3, 4):
            fractions.append(render.progress_parts({"state": "running", "epoch": epoch, "epochs": 3, "batch": batch,
                                                    "steps": 4})[1])
        fractions.append(render.progress_parts({"state": "running", "epoch": epoch + 1, "epochs": 3, "batch": 0,
                                                "steps": 4})[1])
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] == 1.0, fractions
    row = render.summary_row({"id": "a", "best_value": 0.0412345, "best_epoch": 7, "monitor": "val_accuracy"})
    assert row["best"] == "val_accuracy=0.04123 (epoch 7)"  # the BEST column names its metric


def test_options_override_environment(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      r: redis.Redis) -> None:
    monkeypatch.setenv("TRAIND_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    job_id = submit(cli, tmp_path)  # --redis-url wins: the job is recorded and queued in the test's Redis
    assert r.hget(keys.job(job_id), "state") == b"queued"
    assert r.zscore(keys.PENDING, job_id) is not None
    rc, out, err = cli("status", job_id, "--json")
    assert rc == 0 and json.loads(out)["id"] == job_id, err


def test_unreachable_redis_never_shows_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    rc = main(["list", "--redis-url", url])
    out, err = capsys.readouterr()
    assert rc == 1 and "cannot reach Redis at redis://:***@127.0.0.1" in err
    assert "s3cret-pw" not in out + err


def test_up_without_redis_server_prints_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    rc = main(["up", "--storage", str(tmp_path / "data")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "apt-get install redis-server" in err and "brew install redis" in err


def test_tooling_is_not_a_product_command() -> None:
    """Benchmarks and the chaos run are ``python -m bench.NAME`` scripts of the repository, not traind commands:
    the product never imports bench/ (which is not in the wheel)."""
    for cmd in ("chaos", "bench"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 2
    code = ("import sys, daemon.cli, daemon.admin_cli, daemon.supervisor; "
            "sys.exit(10 if [m for m in sys.modules if m == 'bench' or m.startswith(('bench.', 'testkit'))] else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_read_commands_do_not_import_tensorflow(redis_url: str) -> None:
    code = (
        "import sys; from daemon.cli import main; "
        f"rc = main(['list', '--redis-url', {redis_url!r}]); "
        "bad = [m for m in ('tensorflow', 'keras', 'worker.runner') if m in sys.modules]; "
        "sys.exit(10 if bad else rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_module_entry_point_help() -> None:
    res = subprocess.run([sys.executable, "-m", "daemon.cli", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0
    for cmd in ("worker", "supervise", "submit", "status", "list", "watch", "logs", "cancel", "up"):
        assert cmd in res.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_up_embedded_redis_restarts_crashed_children_and_stops_on_sigterm(procs: Procs, tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = procs.traind("up", "--workers", "0", "--storage", str(data), "--grace-s", "5", name="up")
    wait_for(lambda: "Ctrl-C stops everything" in log_of(up) or up.poll() is not None, 60, "the stack to come up")
    out = log_of(up)
    assert up.poll() is None, out
    redis_dir = tmp_path / "data.redis"  # next to the storage root, outside the tree jobs write (issue 8.4)
    url_file = redis_dir / "url"
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    url = url_file.read_text().strip()
    password = urlsplit(url).password
    assert password and password not in out and "redis://:***@127.0.0.1:" in out
    r = redis.Redis.from_url(url)
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert r.config_get("dir")["dir"] == str(redis_dir.resolve())
    redis_pid = int(r.info("server")["process_id"])
    sup_pid = int(re.search(r"supervisor\s+pid (\d+)", out).group(1))  # type: ignore[union-attr]
    if Path("/proc").is_dir():  # the password is passed by file and environment, never on a command line
        for pid in (redis_pid, sup_pid):
            assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    wait_for(lambda: "supervisor watching" in (data / "logs" / "supervisor.log").read_text(), 60,
             "the supervisor to connect")

    os.kill(sup_pid, signal.SIGKILL)  # a crashed child is restarted
    wait_for(lambda: "supervisor exited with code -9; restarting" in log_of(up), 30, "the crash to be noticed")
    wait_for(lambda: (data / "logs" / "supervisor.log").read_text().count("supervisor watching") == 2, 60,
             "the supervisor to be restarted")

    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0
    assert "stopping the stack" in log_of(up)
    wait_for(lambda: not _alive(redis_pid), 30, "the embedded redis-server to exit")
    assert "received SIGTERM; stopping" in (data / "logs" / "supervisor.log").read_text()
    assert (redis_dir / "appendonlydir").is_dir() and not (data / "redis").exists()


# -- what a new user tripped over (issue 9) and terminal escapes (issue 8 item 7) -------------------------------------
def _running(store: Any, job_id: str, token: str = "t") -> None:
    store.transition(job_id, JobState.RUNNING, attempt=1, fields={"token": token, "worker": "w"}, lease_ttl_ms=60_000)


def _progress_steps(store: Any, job_id: str) -> list[Any]:
    """What a worker writes through 2 epochs of 4 batches that end in early stopping, as a list of actions."""

    def batch(b: int, running_epoch: int) -> Any:
        return lambda: store.fenced_update(job_id, "t", fields={"batch": b, "steps": 4, "running_epoch": running_epoch,
                                                                "metrics": {"loss": 1.0 / b}})

    def epoch_end(e: int) -> Any:
        return lambda: store.fenced_update(job_id, "t", fields={"epoch": e, "batch": 0, "best_epoch": e,
                                                                "best_value": 0.5 / e},
                                           history_set={e: {"epoch": e, "loss": 0.4 / e, "val_loss": 0.5 / e}})

    return [*(batch(b, 1) for b in range(1, 5)), epoch_end(1), *(batch(b, 2) for b in range(1, 5)), epoch_end(2),
            lambda: store.transition(job_id, JobState.SUCCEEDED, token="t", fields={"stopped_early": True})]


def _driven_by_polls(steps: list[Any]) -> Any:
    """A watch `check` callback that performs the next step on each poll (no threads, no sleeps to race)."""
    pending = list(steps)

    def check() -> None:
        if pending:
            pending.pop(0)()

    return check


def test_watch_epoch_counter_never_goes_back(cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path) -> None:
    import io

    from daemon.watch import watch_job

    store = Client(redis_url=redis_url, storage=storage_dir).store
    job_id = submit(cli, tmp_path)
    _running(store, job_id)
    out = io.StringIO()  # not a terminal: one plain line per change
    final = watch_job(store, job_id, out, interval_s=0.01, check=_driven_by_polls(_progress_steps(store, job_id)))
    shown = [int(m.group(1)) for m in re.finditer(r"^epoch (\d+)/7 ", out.getvalue(), re.M)]
    assert shown == sorted(shown) and shown[0] == 1 and shown[-1] == 2, out.getvalue()
    assert "1/4" in out.getvalue() and "4/4" in out.getvalue()
    assert final["state"] == "succeeded" and final["epoch"] == 2


def test_watch_fits_an_80_column_terminal(cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path) -> None:
    """Every redraw stays on one line of an 80-column terminal (a wrapped line scrolls the screen each time)."""
    import io

    from rich.console import Console

    from daemon.watch import watch_job

    store = Client(redis_url=redis_url, storage=storage_dir).store
    monitor = "val_sparse_categorical_accuracy"  # a long monitor name makes the full line ~150 columns
    job_id = submit(cli, tmp_path, checkpoint={"monitor": monitor, "mode": "max"})
    _running(store, job_id)
    steps = _progress_steps(store, job_id)
    steps.insert(0, lambda: store.fenced_update(job_id, "t", fields={"restarts": 1, "metrics": {monitor: 0.9}}))
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    final = watch_job(store, job_id, buf, interval_s=0.01, check=_driven_by_polls(steps), console=console)
    assert final["state"] == "succeeded"
    raw = buf.getvalue()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # rich's cursor moves and erases between redraws
    lines = [seg for seg in re.split(r"[\r\n]", text) if seg.strip()]
    assert len(lines) >= 5 and all(len(seg) <= 80 for seg in lines), [len(seg) for seg in lines]
    assert any("…" in seg for seg in lines)  # the long tail was cut, not wrapped
    assert lines[-1].startswith("epoch 2/7 ")
    states = [seg.rstrip().rsplit(" ", 3)[-3:] for seg in lines]  # the state stays visible (issue 22 item 6)
    assert all("running" in st or "succeeded" in st for st in states), lines
    assert raw.count("\x1b[1A") or raw.count("\x1b[2K")  # redrawn in place (cursor up / erase line)
    full = render.progress_line(store.get(job_id, with_history=False))
    assert len(full) > 80  # the test would pass trivially with a short line


def test_status_of_a_running_job_shows_batch_progress(cli: Any, tmp_path: Path, redis_url: str,
                                                      storage_dir: Path) -> None:
    store = Client(redis_url=redis_url, storage=storage_dir).store
    job_id = submit(cli, tmp_path)
    _running(store, job_id)
    store.fenced_update(job_id, "t", fields={"epoch": 3, "batch": 7, "steps": 20, "running_epoch": 4})
    rc, out, _ = cli("status", job_id)
    assert rc == 0 and "progress     epoch 4/7 batch 7/20 [#######" in out and "epochs done  3/7" in out
    rc, out, _ = cli("status", job_id, "--json")
    st = json.loads(out)
    assert (st["running_epoch"], st["batch"], st["steps"], st["epoch"]) == (4, 7, 20, 3)  # ints, not strings


def test_job_status_is_a_summary_and_spec_is_separate(redis_url: str, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir)
    job = client.submit({**GOOD, "checkpoint": {"monitor": "val_mae"}})
    st = job.status()
    assert "spec" not in st and st["monitor"] == "val_mae" and st["epochs"] == 7
    assert job.spec()["model"]["builder"] == "examples.regression:build_model"


def test_cancel_of_a_finished_job_errors_in_python_and_cli(cli: Any, tmp_path: Path, redis_url: str,
                                                           storage_dir: Path) -> None:
    from jobs.errors import JobFinishedError

    client = Client(redis_url=redis_url, storage=storage_dir)
    job_id = submit(cli, tmp_path)
    _running(client.store, job_id)
    client.store.transition(job_id, JobState.SUCCEEDED, token="t")
    with pytest.raises(JobFinishedError, match=f"job {job_id} already succeeded; nothing to cancel"):
        client.job(job_id).cancel()
    rc, out, err = cli("cancel", job_id)
    assert rc == 1 and out == "" and err.strip() == f"error: job {job_id} already succeeded; nothing to cancel"
    assert client.store.get(job_id)["state"] == "succeeded" and not client.store.get(job_id)["cancel_requested"]
    cancelled = submit(cli, tmp_path)
    assert client.job(cancelled).cancel() is JobState.QUEUED
    assert client.job(cancelled).cancel() is JobState.CANCELLED  # again: a no-op, as `traind cancel` says


def test_unique_id_prefix_works_and_ambiguous_prefix_lists_candidates(cli: Any, tmp_path: Path, r: redis.Redis,
                                                                      redis_url: str, storage_dir: Path) -> None:
    a, b = submit(cli, tmp_path, name="a"), submit(cli, tmp_path, name="b")
    common = os.path.commonprefix([a, b])
    short_a = a[:len(common) + 1]
    rc, out, _ = cli("status", short_a, "--json")
    assert rc == 0 and json.loads(out)["id"] == a
    rc, out, _ = cli("logs", short_a)
    assert rc == 0 and "submitted" in out
    rc, out, err = cli("status", common)
    assert rc == 2 and out == "" and f"job id prefix {common!r} is ambiguous" in err and a in err and b in err
    assert Client(redis_url=redis_url, storage=storage_dir).job(short_a).id == a
    rc, out, _ = cli("cancel", short_a)
    assert rc == 0 and f"cancelled {a} (was queued)" in out and r.hget(keys.job(b), "state") == b"queued"
    rc, out, _ = cli("watch", short_a)
    assert rc == 1 and f"job {a} cancelled" in out
    rc, _, err = cli("status", "f" * 21)
    assert rc == 1 and "not found" in err


def test_terminal_escapes_from_redis_are_shown_not_obeyed(cli: Any, tmp_path: Path, r: redis.Redis) -> None:
    """Names, monitors, events and errors planted in Redis (submit refuses such names) print as visible escapes."""
    clear, title = "\x1b[2J", "\x1b]0;owned\x07"
    job_id = submit(cli, tmp_path)
    r.hset(keys.job(job_id), mapping={"name": f"n{clear}{title}\r\x9b\u2028\u202e", "error": f"boom{clear}",
                                      "state": "failed", "best_value": "0.5", "best_epoch": "1",
                                      "metrics": json.dumps({f"val_{clear}": 1.0})})
    r.rpush(keys.events(job_id), json.dumps({"msg": f"ev{title}", "level": f"info{clear}", "ts": 1}))
    outputs = []
    for args in (("list",), ("status", job_id), ("logs", job_id), ("watch", job_id)):
        rc, out, err = cli(*args)
        outputs.append(out + err)
    for text in outputs:
        assert not [c for c in "\x1b\x07\r\x9b\u2028\u202e" if c in text], text
    assert "n\\x1b[2J\\x1b]0;owned\\x07\\r\\x9b\\u2028\\u202e" in outputs[0] + outputs[1]  # visibly escaped
    assert "ev\\x1b]0;owned\\x07" in outputs[2] and "boom\\x1b[2J" in outputs[3]
    assert render.clean("plain name ünï 日本") == "plain name ünï 日本"


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIND_", "TF_CPP"))}
    return {**env, "TRAIND_ALLOWED_MODULES": "examples"}  # what a user exports for submit


def test_read_commands_import_neither_client_nor_numpy(cli: Any, tmp_path: Path, redis_url: str) -> None:
    """`traind status/list/logs` answer at once: nothing heavy is imported (the speed itself: bench/cli_latency.py)."""
    job_id = submit(cli, tmp_path)
    heavy = ("tensorflow", "keras", "numpy", "rq", "pydantic", "pydantic_settings", "yaml", "rich", "jobs.client",
             "jobs.contract.queue", "jobs.contract.spec", "jobs.settings", "worker")
    for args in (["status", job_id[:-3]], ["status", job_id, "--json"], ["list"], ["logs", job_id], ["cancel", job_id]):
        code = (
            "import sys, json; from daemon.cli import main; "
            f"rc = main({args!r} + ['--redis-url', {redis_url!r}]); "
            f"print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r})]))"
        )
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env=_subprocess_env())
        rc, loaded = json.loads(res.stdout.splitlines()[-1])
        assert rc == 0 and loaded == [], (args, loaded, res.stderr)


def test_read_commands_still_refuse_unknown_variables(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.cli_context import READ_ENV
    from jobs.settings import _known_env_names

    assert READ_ENV <= _known_env_names()  # the fast path only skips validating real settings
    monkeypatch.setenv("TRAIND_REDIS_ULR", "redis://typo")
    rc, _, err = cli("list")
    assert rc == 2 and "TRAIND_REDIS_ULR (did you mean TRAIND_REDIS_URL?)" in err


def test_up_with_a_dead_external_redis_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    stale = f"redis://:old-pw@127.0.0.1:{free_port()}/0"  # what an export from an earlier `traind up` leaves
    monkeypatch.setenv("TRAIND_REDIS_URL", stale)
    rc = main(["up", "--workers", "0", "--storage", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert "TRAIND_REDIS_URL is redis://:***@127.0.0.1:" in err and "no Redis answers there" in err
    assert "unset TRAIND_REDIS_URL" in err and "old-pw" not in err
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_tensorflow_banners_stay_out_of_worker_and_client_output(redis_url: str, storage_dir: Path) -> None:
    """TensorFlow's INFO banners (cpu_feature_guard, oneDNN, absl pre-init) are hidden; warnings and errors are not."""
    banners = ("cpu_feature_guard", "oneDNN custom operations", "absl::InitializeLog")
    env = _subprocess_env()
    res = subprocess.run([sys.executable, "-m", "daemon.cli", "worker", "--burst", "--redis-url", redis_url,
                          "--storage", str(storage_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0 and "serving" in res.stdout + res.stderr, res.stderr
    assert not [b for b in banners if b in res.stdout + res.stderr], res.stderr
    client_code = "from jobs.client import quiet_tensorflow; quiet_tensorflow(); import keras; print(keras.__version__)"
    res = subprocess.run([sys.executable, "-c", client_code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0 and not [b for b in banners if b in res.stderr], res.stderr


def test_one_node_submit_prints_no_replication_lines(redis_url: str, storage_dir: Path) -> None:
    """Issue 22 item 2: one Redis node (what `traind up` runs) is expected, so a submit says nothing about replicas."""
    res = subprocess.run([sys.executable, "-m", "daemon.cli", "submit", str(ROOT / "examples" / "regression.yaml"),
                          "--redis-url", redis_url, "--storage", str(storage_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=_subprocess_env())
    assert res.returncode == 0 and re.fullmatch(r"[0-9a-f]{21}\n", res.stdout), (res.stdout, res.stderr)
    assert res.stderr == "", res.stderr


def test_list_shows_each_job_under_its_shortest_unique_handle(cli: Any, r: redis.Redis, redis_url: str,
                                                             storage_dir: Path) -> None:
    """Issue 22 item 3: ids share a time prefix; `list` shows the shortest prefix no other job shares (at least 8)."""
    from daemon.handles import MIN_LEN

    spec = {**GOOD, "checkpoint": {"monitor": "val_mae"}}
    ids = [j.id for j in Client(redis_url=redis_url, storage=storage_dir).submit_many([spec] * 5)]  # one burst
    r.hset(keys.job(ids[1]), mapping={"best_value": "0.25", "best_epoch": "2"})
    ids.append(ids[0][:MIN_LEN + 2] + "f" * (len(ids[0]) - MIN_LEN - 2))  # a neighbour sharing 10 characters
    r.zadd(keys.JOBS_INDEX, {ids[-1]: r.zscore(keys.JOBS_INDEX, ids[0]) - 1})  # created just before
    rc, out, _ = cli("list", "--limit", "5")
    handles = [line.split()[0] for line in out.splitlines()[1:]]
    assert "val_mae=0.25 (epoch 2)" in out  # BEST names the job's monitor
    assert len(handles) == 5 and all(len(h) >= MIN_LEN for h in handles), handles
    by_id = {next(i for i in ids if i.startswith(h)): h for h in handles}
    assert sorted(by_id) == sorted(ids[:5])  # each handle names one of the listed jobs ...
    assert len(by_id[ids[0]]) >= MIN_LEN + 3  # ... made longer by the neighbour
    for job_id, h in by_id.items():
        assert [i for i in ids if i.startswith(h)] == [job_id]  # ... and no other job
        assert [i for i in ids if i.startswith(h[:-1])] != [job_id] or len(h) == MIN_LEN  # ... and is the shortest
        rc, out, _ = cli("status", h, "--json")
        assert rc == 0 and json.loads(out)["id"] == job_id


def test_a_job_waiting_with_no_worker_says_so(cli: Any, tmp_path: Path, r: redis.Redis, redis_url: str,
                                              storage_dir: Path) -> None:
    """Issue 22 item 5: after a few seconds with no live worker for its queue, status and watch say how to start one."""
    import io

    from daemon.watch import watch_job
    from jobs.ops import waiting

    store = Client(redis_url=redis_url, storage=storage_dir).store
    job_id = submit(cli, tmp_path)
    rc, out, _ = cli("status", job_id)
    assert rc == 0 and "no live worker" not in out  # just submitted: a worker may be about to take it
    r.hset(keys.job(job_id), "updated_at", store.now_ms() - int(waiting.GRACE_S * 1000) - 1000)  # waited 6 s
    rc, out, _ = cli("status", job_id)
    assert rc == 0 and "note" in out and "no live worker serves queue default (cpu)" in out, out
    assert "`traind worker --queues default`" in out

    # a live CPU worker on another queue does not count; one on this queue does
    r.hset(keys.worker("w1"), mapping={"device": "cpu", "queues": "other"})
    r.zadd(keys.WORKERS, {"w1": store.now_ms()})
    assert "no live worker" in cli("status", job_id)[1]
    r.hset(keys.worker("w1"), "queues", "other,default")
    assert "no live worker" not in cli("status", job_id)[1]
    r.zadd(keys.WORKERS, {"w1": store.now_ms() - int(waiting.LIVE_S * 1000) - 1000})  # its heartbeat is old: gone

    steps = [lambda: None, lambda: None, lambda: store.request_cancel(job_id)]
    out_buf = io.StringIO()
    final = watch_job(store, job_id, out_buf, interval_s=0.01, check=_driven_by_polls(steps))
    assert final["state"] == "cancelled"
    assert out_buf.getvalue().count("note: no live worker serves queue default (cpu)") == 1, out_buf.getvalue()


def test_watch_says_why_a_job_waits_and_where(cli: Any, tmp_path: Path, r: redis.Redis, redis_url: str,
                                              storage_dir: Path) -> None:
    """Issue 24: watch (and submit --wait, the same loop) say the waiting reason with the position, as status does,
    once the job waited a few seconds, and say it again only when it changed."""
    import io

    from daemon.watch import watch_job
    from jobs.ops import waiting

    store = Client(redis_url=redis_url, storage=storage_dir).store
    submit(cli, tmp_path)
    job_id = submit(cli, tmp_path)
    r.hset(keys.worker("w1"), mapping={"device": "cpu", "queues": "default"})  # a live worker: busy, not missing
    r.zadd(keys.WORKERS, {"w1": store.now_ms()})
    out_buf = io.StringIO()
    early = [lambda: None, lambda: r.hset(keys.job(job_id), "updated_at",
                                          store.now_ms() - int(waiting.GRACE_S * 1000) - 1000)]
    final = watch_job(store, job_id, out_buf, interval_s=0.01,
                      check=_driven_by_polls([*early, lambda: None, lambda: store.request_cancel(job_id)]))
    assert final["state"] == "cancelled"
    lines = [ln for ln in out_buf.getvalue().splitlines() if ln.startswith(("waiting:", "note:"))]
    assert len(lines) == 1 and "position 2 of 2 in " in lines[0], out_buf.getvalue()  # not before the grace


def test_a_reader_that_leaves_the_pipe_gets_no_traceback(cli: Any, tmp_path: Path, redis_url: str) -> None:
    """Issue 22 item 6: `traind status ID | head -5` (the reader leaves first) ends quietly."""
    job_id = submit(cli, tmp_path)
    for args in (["status", job_id], ["list"], ["logs", job_id]):
        p = subprocess.Popen([sys.executable, "-m", "daemon.cli", *args, "--redis-url", redis_url], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_subprocess_env())
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()  # the reader is gone before the first line is written
        err = p.stderr.read().decode()
        assert p.wait(60) == 141 and err == "", (args, err)


def test_a_looked_up_job_says_what_it_knows_of_its_durability(redis_url: str, storage_dir: Path) -> None:
    """Issue 22 item 6: `client.job(id).durability` is not empty."""
    client = Client(redis_url=redis_url, storage=storage_dir)
    submitted = client.submit(GOOD)
    assert submitted.durability == "degraded: the primary has no replica connected"
    looked_up = client.job(submitted.id[:10]).durability
    assert looked_up == "not known (looked up, not submitted here); Redis now: single node: writes are not replicated"
