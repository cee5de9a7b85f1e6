"""Jobs trained entirely through ``s3://`` (moto over real HTTP, via s3fs/botocore): the client, each worker and the
test have private directories (HOME, XDG dirs, TMPDIR, working directory); nothing is shared but Redis and S3.

- a worker SIGKILLed mid-epoch: a second worker, on another private dir, resumes from the S3 checkpoint; every
  epoch is in the history once and ``job.load_model()`` on the client returns the best model (sha256-verified);
- S3 failing during checkpoint uploads (503s, connections cut mid-upload, the endpoint down and back): the job
  carries on, and no partial object is ever loaded or committed;
- a torn checkpoint object is skipped with an event and the previous one used; an unfinished multipart upload of
  the killed attempt is aborted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from jobs.client import Client
from jobs.contract.events import EventKind
from jobs.contract.states import JobState
from jobs.redis.store import JobStore
from tests.conftest import ROOT, Procs, log_of, wait_for
from tests.fault.helpers import (
    FAULT_ENV,
    LEASE_TTL_S,
    RUN_S,
    SUPERVISOR_INTERVAL_S,
    WORKER_START_S,
    assert_history_complete,
    events_of,
    job_spec,
    kill_tree,
    wait_committed,
    wait_mid_epoch,
    wait_terminal,
)
from tests.storage.conftest import private_env
from tests.storage.s3server import FaultProxy, MotoS3

pytestmark = pytest.mark.fault


class S3Cluster:
    """Workers and a supervisor on s3://, each process in its own private directory."""

    def __init__(self, procs: Procs, redis_url: str, s3_url: str, s3_env: dict[str, str], tmp: Path) -> None:
        self.procs, self.url, self.s3_url, self.s3_env, self.tmp = procs, redis_url, s3_url, s3_env, tmp
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.supervisors: list[subprocess.Popen[bytes]] = []
        self.store = JobStore(Client(redis_url=redis_url, storage=s3_url).r)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        home = self.tmp / name
        cwd = home / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        env = {**private_env(home, {**os.environ, **self.s3_env}), **FAULT_ENV, "PYTHONPATH": str(ROOT)}
        env.pop("TRAIND_STORAGE_DIR", None)
        log = open(self.procs.logdir / f"{name}.log", "wb")  # closed with the process
        p = subprocess.Popen([sys.executable, "-m", "daemon.cli", *args, "--redis-url", self.url, "--storage",
                              self.s3_url], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        p.log_path = log.name  # type: ignore[attr-defined]
        self.procs.procs.append(p)
        return p

    def worker(self, wid: str) -> subprocess.Popen[bytes]:
        self.workers[wid] = self._spawn(wid, "worker", "--worker-id", wid)
        return self.workers[wid]

    def supervisor(self) -> None:
        self.supervisors.append(self._spawn(f"supervisor{len(self.supervisors)}", "supervise", "--interval-s",
                                            str(SUPERVISOR_INTERVAL_S)))

    def wait_registered(self, *wids: str) -> None:
        for w in wids:
            wait_for(lambda w=w: self.store.r.exists(f"traind:worker:{w}") or self.workers[w].poll() is not None,
                     WORKER_START_S, f"worker {w} to register")
            assert self.workers[w].poll() is None, log_of(self.workers[w])

    def holder(self, job_id: str) -> str:
        return str(self.store.get(job_id, with_history=False)["worker"])

    def logs(self) -> str:
        return "\n".join(f"--- {w} ---\n{log_of(p)}" for w, p in
                         [*self.workers.items(), *((f"sup{i}", p) for i, p in enumerate(self.supervisors))])

    def private_files(self, name: str) -> list[str]:
        """Files a process left in its private dir, apart from its log and caches."""
        base = self.tmp / name
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and "cache" not in p.parts)


@pytest.fixture()
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test process' own temp dir (the client's downloads land there)."""
    d = tmp_path / "test-process"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def objects(moto: MotoS3, bucket: str, prefix: str) -> dict[str, bytes]:
    c = moto.client()
    out = {}
    for o in c.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def test_kill_mid_epoch_resumes_from_s3_on_another_machine(procs: Procs, redis_url: str, s3_url: str, bucket: str,
                                                          s3_env: dict[str, str], moto: MotoS3, tmp_path: Path,
                                                          private_tmp: Path) -> None:
    import keras

    from tests.models import load_data

    # 4,800 samples, batch 8: 450 batches an epoch (~1 s even on a quiet machine, where 57 batches took 0.16 s and the
    # job could finish between two progress writes), so the kill lands mid-epoch however fast or loaded the machine
    x, y = load_data(n=4800)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    client = Client(redis_url=redis_url, storage=s3_url)  # a laptop: Redis URL + s3:// + AWS_* variables only
    c = S3Cluster(procs, redis_url, s3_url, s3_env, tmp_path)
    c.worker("w1")
    c.worker("w2")
    c.supervisor()
    c.wait_registered("w1", "w2")
    epochs = 8
    job = client.fit(model, x, y, epochs=epochs, batch_size=8, validation_split=0.25, resume_from="latest",
                     callbacks=[keras.callbacks.ModelCheckpoint(str(private_tmp / "best.keras"), save_best_only=True)])
    spec = job.spec()
    assert spec["data"]["arrays"] and spec["model"]["initial_weights"]
    at_kill = wait_mid_epoch(c.store, job.id, min_epoch=2, min_batch=5, max_batch=400)
    wait_committed(c.store, job.id, at_kill["epoch"])
    victim = c.holder(job.id)
    kill_tree(c.workers[victim])
    index = c.store.checkpoints(job.id)
    latest = index[max(index)]

    final = wait_terminal(c.store, job.id, RUN_S + LEASE_TTL_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert (final["restarts"], final["attempt"]) == (1, 2)
    assert final["worker"] != victim
    assert_history_complete(final, epochs)
    e = latest["epoch"]
    assert [(r["why"], r["epoch"], r["file"]) for r in events_of(c.store, job.id, EventKind.RESUMED)] == [
        ("latest", e, f"ckpt/e{e:06d}-b000000-a1.npz")]

    # Everything lives in the bucket, under the prefix; the workers' private dirs hold no checkpoint.
    objs = objects(moto, bucket, "team/traind/")
    assert f"team/traind/uploads/{spec['data']['arrays']}.npz" in objs
    best = final["best_checkpoint"]
    best = json.loads(best) if isinstance(best, str) else best
    assert hashlib.sha256(objs[f"team/traind/jobs/{job.id}/{best['file']}"]).hexdigest() == best["sha256"]
    for m in c.store.checkpoints(job.id).values():
        assert hashlib.sha256(objs[f"team/traind/jobs/{job.id}/{m['file']}"]).hexdigest() == m["sha256"]
    run = f"team/traind/jobs/{job.id}/tensorboard/{final['name']}-{job.id[:8]}/"  # <name>-<short id>: the run
    tb = [k for k in objs if "/tensorboard/" in k]
    assert tb and all(k.startswith(run + "events.out.tfevents.") for k in tb), tb  # one run, the first attempt's gone
    for w in ("w1", "w2"):
        assert not [f for f in c.private_files(w) if "jobs" in f or f.endswith((".npz", ".keras"))], w
    # The resuming worker fetched the upload into its own cache (verified by hash).
    survivor = final["worker"]
    cached = list((tmp_path / survivor / "home" / "cache" / "traind" / "uploads").glob("*.npz"))
    assert f"{spec['data']['arrays']}.npz" in [p.name for p in cached]

    loaded = client.job(job.id).load_model()  # downloads best.keras from S3, verifies its sha256, loads it
    n_train = int(len(x) * 0.75)
    val_loss = float(loaded.evaluate(x[n_train:], y[n_train:], verbose=0, batch_size=8))
    assert val_loss == pytest.approx(float(final["best_value"]), rel=1e-4, abs=1e-5)
    assert not list(private_tmp.glob("traind-get-*")), "the client's download was cleaned up"


def _ckpt_put(method: str, path: str) -> bool:
    return method in ("PUT", "POST") and "/ckpt/" in path and path.split("?")[0].endswith(".npz")


def test_s3_failing_during_checkpoint_uploads(procs: Procs, redis_url: str, s3_url: str, bucket: str,
                                              s3_env: dict[str, str], proxy: FaultProxy, moto: MotoS3,
                                              tmp_path: Path) -> None:
    """503s, connections cut half way through an upload, the endpoint gone for seconds: the job carries on; every
    committed checkpoint's object matches its sha256 (a partial object is never committed, so never loaded)."""
    c = S3Cluster(procs, redis_url, s3_url, {**s3_env, "TRAIND_STORAGE_RETRY_S": "120"}, tmp_path)
    c.worker("w1")
    c.supervisor()
    c.wait_registered("w1")
    client = Client(redis_url=redis_url, storage=s3_url)
    job = client.submit(job_spec("s3-faults", epochs=7))
    wait_committed(c.store, job.id, 1, timeout=RUN_S)
    proxy.cut(2, _ckpt_put)
    proxy.fail(4, 503, _ckpt_put)
    wait_for(lambda: proxy.pending() == 0, RUN_S, "the injected faults to be hit")
    wait_committed(c.store, job.id, 4, timeout=RUN_S)
    proxy.down()  # as a restarting server: connection refused, for a few seconds
    restart = threading.Timer(4.0, proxy.up)
    restart.start()
    final = wait_terminal(c.store, job.id, RUN_S + 60)
    restart.join()
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert final["attempt"] == 1, "the worker rode out the faults; nothing was retried as a dead worker"
    assert_history_complete(final, 7)
    statuses = [s for m, p, s in proxy.log if _ckpt_put(m, p)]
    assert statuses.count(-1) == 2 and statuses.count(503) == 4, statuses
    objs = objects(moto, bucket, f"team/traind/jobs/{job.id}/")
    index = c.store.checkpoints(job.id)
    for m in index.values():
        assert hashlib.sha256(objs[f"team/traind/jobs/{job.id}/{m['file']}"]).hexdigest() == m["sha256"]
    assert "retrying in" in log_of(c.workers["w1"])
    # keep_last=2 retention deleted the objects of dropped checkpoints: only the indexed ones (and manifests) remain.
    names = [m["file"].removeprefix("ckpt/").removesuffix(".npz") for m in index.values()]
    assert len(index) < 7
    assert sorted(k.rsplit("/", 1)[1] for k in objs if "/ckpt/" in k) == sorted(
        f"{n}{ext}" for n in names for ext in (".json", ".npz"))


def test_torn_s3_object_is_skipped_and_the_previous_used(procs: Procs, redis_url: str, s3_url: str, bucket: str,
                                                         s3_env: dict[str, str], moto: MotoS3,
                                                         tmp_path: Path) -> None:
    c = S3Cluster(procs, redis_url, s3_url, s3_env, tmp_path)
    c.worker("w1")
    c.supervisor()
    c.wait_registered("w1")
    client = Client(redis_url=redis_url, storage=s3_url)
    job = client.submit(job_spec("s3-torn", epochs=6))
    done = wait_mid_epoch(c.store, job.id, min_epoch=3)["epoch"]
    wait_committed(c.store, job.id, done)
    kill_tree(c.workers["w1"])
    index = c.store.checkpoints(job.id)
    newest = index[max(index)]
    done = newest["epoch"]
    s3 = moto.client()
    key = f"team/traind/jobs/{job.id}/{newest['file']}"
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])  # torn: the name stays, the tail is gone
    # What a kill during a multipart upload leaves: an unfinished upload with a part.
    torn_key = f"team/traind/jobs/{job.id}/ckpt/e{done + 1:06d}-b000000-a1.npz"
    mpu = s3.create_multipart_upload(Bucket=bucket, Key=torn_key)
    s3.upload_part(Bucket=bucket, Key=mpu["Key"], PartNumber=1, UploadId=mpu["UploadId"], Body=os.urandom(1024))
    c.worker("w2")

    final = wait_terminal(c.store, job.id, RUN_S + WORKER_START_S)
    assert final["state"] == JobState.SUCCEEDED.value, c.logs()
    assert_history_complete(final, 6)
    skipped = events_of(c.store, job.id, EventKind.SKIPPED_CHECKPOINT)
    assert [(s["epoch"], s["file"]) for s in skipped] == [(done, newest["file"])]
    assert "failed its sha256 check (torn or corrupt)" in skipped[0]["msg"]
    fallback = index[max(k for k in index if k < max(index))]
    assert [(r["why"], r["epoch"], r["file"]) for r in events_of(c.store, job.id, EventKind.RESUMED)] == [
        ("fallback", fallback["epoch"], fallback["file"])]
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the unfinished upload was aborted"


def test_a_job_whose_bucket_is_gone_fails_with_one_line_and_the_worker_carries_on(
        procs: Procs, redis_url: str, s3_env: dict[str, str], moto: MotoS3, bucket: str, tmp_path: Path) -> None:
    gone = "s3://bucket-that-was-deleted/traind"
    c = S3Cluster(procs, redis_url, gone, s3_env, tmp_path)
    c.worker("w1")
    c.wait_registered("w1")
    client = Client(redis_url=redis_url, storage=gone)
    job = client.submit(job_spec("gone", epochs=2))
    final = wait_terminal(c.store, job.id, RUN_S)
    assert final["state"] == JobState.FAILED.value
    assert final["error"].startswith(f"storage {gone}: bucket 'bucket-that-was-deleted' does not exist")
    assert "\n" not in final["error"] and "testing" not in final["error"]
    assert c.workers["w1"].poll() is None, "the worker carries on"
