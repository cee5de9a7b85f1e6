"""Issue 26: a laptop with a URL and a token. Against one real stack (tests/remote/conftest.py: redis-server, moto
S3, ``traind serve``, a worker), processes with no Redis URL, no storage setting and no AWS credentials train
with ``client.fit`` and drive the CLI over HTTP; bad uploads are refused with one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from testkit.cluster import wait_for
from tests.remote.conftest import MAX_UPLOAD, READ_TOKEN, Stack
from tests.serve.conftest import slow_spec

pytestmark = pytest.mark.timeout(240)


def test_uploads_through_the_api_are_checked_and_bounded(stack: Stack) -> None:
    data = os.urandom(1000)
    digest = hashlib.sha256(data).hexdigest()
    with stack.http() as h:
        bad = h.put(f"/api/v1/uploads/npz/{'0' * 64}", content=data)
        assert bad.status_code == 422 and "sha256" in bad.json()["detail"] and "nothing was stored" in bad.json()[
            "detail"]
        big = os.urandom(MAX_UPLOAD + 1)
        over = h.put(f"/api/v1/uploads/npz/{hashlib.sha256(big).hexdigest()}", content=big)
        assert over.status_code == 413 and "TRAIND_MAX_UPLOAD_BYTES" in over.json()["detail"]

        def chunks() -> object:  # no Content-Length: counted while it streams
            for _ in range(MAX_UPLOAD // 50_000 + 2):
                yield b"x" * 50_000

        over = h.put(f"/api/v1/uploads/npz/{'1' * 64}", content=chunks())
        assert over.status_code == 413 and "TRAIND_MAX_UPLOAD_BYTES" in over.json()["detail"]
        plan = h.post("/api/v1/uploads", json={"kind": "npz", "sha256": digest, "size": MAX_UPLOAD + 1})
        assert plan.status_code == 413
        ok = h.put(f"/api/v1/uploads/npz/{digest}", content=data)
        assert ok.status_code == 200 and ok.json()["size"] == 1000
        assert h.post("/api/v1/uploads", json={"kind": "npz", "sha256": digest, "size": 1000}).json()["exists"]
        # a presigned PUT of other bytes than its name says: the verify step deletes it
        wrong = hashlib.sha256(b"other").hexdigest()
        plan = h.post("/api/v1/uploads", json={"kind": "dataset", "sha256": wrong, "size": 4}).json()
        assert plan["put_url"] and "X-Amz-Expires=300" in plan["put_url"] and f"ds-{wrong}.tar" in plan["put_url"]
        import httpx

        assert httpx.put(plan["put_url"], content=b"evil").status_code == 200
        v = h.post(f"/api/v1/uploads/dataset/{wrong}/verify")
        assert v.status_code == 422 and "was deleted" in v.json()["detail"]
        assert not h.post("/api/v1/uploads", json={"kind": "dataset", "sha256": wrong, "size": 4}).json()["exists"]
    with stack.http(READ_TOKEN) as ro:  # a read-only token uploads nothing
        assert ro.put(f"/api/v1/uploads/npz/{digest}", content=data).status_code == 403
    # a job's file is readable only under its own prefix
    with stack.http() as h:
        assert h.get("/api/v1/jobs/0190aaaaaaaaaaaa/file", params={"key": "uploads/x.npz"}).status_code in (404, 422)


def test_the_cli_over_http(stack: Stack, tmp_path: Path) -> None:
    from daemon import render

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(slow_spec("remote-cli", epochs=3, batch_delay_s=0.03)))
    # `submit --wait` on an 80-column terminal: the SSE stream drawn in place, never wrapped
    rc, raw = _on_a_pty(stack, "submit", str(spec), "--wait", "--timeout", "120")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert rc == 0 and "succeeded" in text, raw
    job_id = text.split("submitted ", 1)[1].split()[0]
    lines = [seg for seg in re.split(r"[\r\n]", text) if seg.strip()]
    progress = [seg for seg in lines if seg.startswith("epoch ")]
    assert len(progress) >= 2 and all(len(seg) <= 80 for seg in progress), [len(seg) for seg in lines]
    assert raw.count("\x1b[1A") or raw.count("\x1b[2K")  # redrawn in place
    st = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert st["state"] == "succeeded" and len(st["history"]) == 3
    assert len(render.progress_line(st, st["history"][-1])) > 80  # the 80 columns were a real constraint
    _files_download_verified(stack, job_id)
    p = stack.cli("watch", job_id[:10])  # a finished job: its last line and the summary, exit 0
    assert p.returncode == 0 and "epoch 3/3" in p.stdout and "succeeded" in p.stdout, p.stdout + p.stderr
    p = stack.cli("status", job_id[:10])
    assert p.returncode == 0 and "succeeded" in p.stdout and job_id in p.stdout, p.stdout + p.stderr
    p = stack.cli("list")
    assert p.returncode == 0 and "remote-cli" in p.stdout and job_id[:8] in p.stdout, p.stdout + p.stderr
    p = stack.cli("logs", job_id)
    assert p.returncode == 0 and "training finished" in p.stdout and "submitted" in p.stdout, p.stdout
    p = stack.cli("workers")
    assert p.returncode == 0 and "WORKER" in p.stdout and "cpu" in p.stdout, p.stdout + p.stderr
    p = stack.cli("cancel", job_id)  # it succeeded: nothing to cancel, one line, exit 1
    assert p.returncode == 1 and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1
    # cancel, retry and cancel again over HTTP
    spec.write_text(yaml.safe_dump(slow_spec("remote-cancel", epochs=40, batch_delay_s=0.05)))
    p = stack.cli("submit", str(spec), "--json")
    assert p.returncode == 0, p.stderr
    job_id = json.loads(p.stdout)["id"]
    p = stack.cli("cancel", job_id)
    assert p.returncode == 0 and ("cancelled" in p.stdout or "cancel requested" in p.stdout), p.stdout + p.stderr
    wait_for(lambda: json.loads(stack.cli("status", job_id, "--json").stdout)["state"] == "cancelled", 60,
             "the job to be cancelled")
    p = stack.cli("retry", job_id)
    assert p.returncode == 0 and "as attempt 2" in p.stdout, p.stdout + p.stderr
    p = stack.cli("cancel", job_id)
    assert p.returncode == 0, p.stderr


def _token(stack: Stack, name: str) -> str:
    p = subprocess.run([sys.executable, "-m", "daemon.cli", "token", "add", name, "--role", "submit", "--redis-url",
                        stack.redis_url], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    return p.stdout.strip()


def _files_download_verified(stack: Stack, job_id: str) -> None:
    """A job's checkpoint comes back byte-exact through the API and through a presigned GET; other keys do not."""
    import httpx

    from jobs.storage.ckpt_format import record_key

    with stack.http(READ_TOKEN) as h:
        index = h.get(f"/api/v1/jobs/{job_id}/checkpoint-index").json()
        manifest = index[max(index, key=int)]
        key = record_key(job_id, manifest)
        via_api = h.get(f"/api/v1/jobs/{job_id}/file", params={"key": key})
        assert via_api.status_code == 200 and hashlib.sha256(via_api.content).hexdigest() == manifest["sha256"]
        url = h.get(f"/api/v1/jobs/{job_id}/file-url", params={"key": key}).json()["url"]
        assert "X-Amz-Expires=300" in url and key in url
        assert hashlib.sha256(httpx.get(url).content).hexdigest() == manifest["sha256"]
        other = h.get(f"/api/v1/jobs/{job_id}/file", params={"key": "jobs/0190aaaaaaaaaaaa/ckpt/x.npz"})
        assert other.status_code == 403 and "is not a file of job" in other.json()["detail"]


def _on_a_pty(stack: Stack, *args: str) -> tuple[int, str]:
    """Run ``traind ARGS`` on a pseudo-terminal of 80 columns (COLUMNS=80); its exit code and all it drew."""
    master, slave = pty.openpty()
    env = stack.laptop_env("pty", COLUMNS="80", LINES="24", TERM="xterm")
    p = subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], env=env, cwd=stack.tmp,
                         stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        out.extend(chunk)
    rc = p.wait(30)
    os.close(master)
    return rc, out.decode(errors="replace")


def test_refusals_are_one_clear_line(stack: Stack, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(slow_spec("refused", epochs=1)))
    p = stack.cli("submit", str(spec), TRAIND_API_TOKEN=READ_TOKEN)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "refused this token (403)" in p.stderr
    p = stack.cli("list", TRAIND_API_TOKEN="wrong-token-0000000")
    assert p.returncode == 1 and "refused this token (401)" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = stack.cli("status", "0190ffffffffffff")
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    # named tokens (`traind token add`, on the server's side): the owner is the token's name, and a submit-only token
    # cannot cancel another owner's job
    alice, bob = (_token(stack, name) for name in ("alice", "bob"))
    long_spec = tmp_path / "long.yaml"  # still running (or queued) when alice cancels it
    long_spec.write_text(yaml.safe_dump(slow_spec("alice", epochs=40, batch_delay_s=0.05)))
    p = stack.cli("submit", str(long_spec), "--json", TRAIND_API_TOKEN=alice)
    assert p.returncode == 0, p.stderr
    job_id = json.loads(p.stdout)["id"]
    assert json.loads(stack.cli("status", job_id, "--json", TRAIND_API_TOKEN=bob).stdout)["owner"] == "alice"
    p = stack.cli("cancel", job_id, TRAIND_API_TOKEN=bob)
    assert p.returncode == 1 and "(403)" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = stack.cli("cancel", job_id, TRAIND_API_TOKEN=alice)
    assert p.returncode == 0, p.stderr
    # no variables at all: the config file's current context (h26srv's contexts) names the API and its token file
    token_file = tmp_path / "team.token"
    token_file.write_text(alice + "\n")
    token_file.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(f'current = "team"\n\n[contexts.team]\napi_url = "{stack.url}"\ntoken_file = "{token_file}"\n')
    config.chmod(0o600)
    from jobs.remote.target import resolve_target  # checked here first: a CLI that missed it would try Redis

    target = resolve_target(env={"TRAIND_CONFIG": str(config)})
    assert target is not None and target.url == stack.url and target.token == alice
    p = stack.cli("list", drop=("TRAIND_API_URL", "TRAIND_API_TOKEN"), TRAIND_CONFIG=str(config))
    assert p.returncode == 0 and "alice" in p.stdout, p.stdout + p.stderr
    bad = slow_spec("bad", epochs=0)
    bad["model"]["builder"] = "os:system"
    spec.write_text(yaml.safe_dump(bad))
    p = stack.cli("submit", str(spec))
    assert p.returncode == 2 and "refused (2 problem(s))" in p.stderr, p.stderr


def test_laptop_fits_arrays_and_a_dataset_and_loads_the_models(stack: Stack) -> None:
    """Last in this module: the laptop process started with the stack and ran while the other tests did."""
    assert stack.laptop is not None
    rc = stack.laptop.wait(240)
    out = Path(stack.laptop.log_path).read_text(errors="replace")  # type: ignore[attr-defined]
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    assert rc == 0 and line, out[-5000:]
    res = json.loads(line[len("RESULT "):])
    assert res["kind"] == "RemoteClient"
    for name in ("arrays", "dataset"):
        r = res[name]
        assert r["state"] == "succeeded" and r["epochs"] == 2 and r["history"] == 2, r
        assert r["n_weights"] == r["same_arch"] and len(r["pred"]) == 4 and all(map(_finite, r["pred"])), r
        assert r["events"] > 0
    many = res["many"]
    assert many["listed"] and set(many["previous"]) <= {"queued", "running"}, many
    assert all(st in ("cancelled", "running") for st in many["states"]), many  # a running one stops at a batch end
    # the data, the Dataset and the initial weights went to S3 through presigned URLs (moto is reachable here)
    kinds = {(k.split("/")[1].startswith("ds-"), how) for k, how in res["uploads"]}
    assert (True, "presigned") in kinds and (False, "presigned") in kinds, res["uploads"]
    keys = {o["Key"] for o in stack.moto.client().list_objects_v2(Bucket=stack.bucket)["Contents"]}
    assert {f"team/{k}" for k, _ in res["uploads"]} <= keys
    assert any(k.startswith(f"team/jobs/{res['arrays']['id']}/") for k in keys)


def _finite(v: float) -> bool:
    return v == v and abs(v) < 1e30
