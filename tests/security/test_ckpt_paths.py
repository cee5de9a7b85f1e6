"""Issue 8.3, 8.4, 8.11: a resuming worker never lists, deletes or loads outside its job's own ``ckpt/``.

Planted the way anyone with Redis (index entries) or storage (symlinks) write access could: a ``ckpt`` symlinked
out of the root or to another directory inside it; manifests naming ``../../uploads/<sha>.npz`` or
``../../redis/url``; corrupt manifests; a checkpoint with unexpected array names. Each is refused or skipped with an
event; nothing outside ``ckpt/`` is deleted; a corrupt checkpoint never fails the job (it falls back).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.contract.queue import enqueue
from jobs.redis.store import JobStore
from jobs.storage.base import sha256_file
from tests.security.helpers import QUEUE, failed_with, good_spec, plant_job, record, run_burst


@pytest.mark.parametrize("target", ["outside", "uploads", "other-job"])
def test_ckpt_symlink_is_never_followed(
    target: str, r: redis.Redis, redis_url: str, storage_dir: Path, tmp_path: Path
) -> None:
    """``jobs/<id>/ckpt`` -> a directory outside the root, or the root's own ``uploads/``, or ``jobs/<id>`` -> another
    job's directory: the temp-file cleanup of a resuming attempt used to delete ``.*.tmp*`` there. Now the job fails
    with a storage error, nothing there is touched."""
    elsewhere = {"outside": tmp_path / "elsewhere", "uploads": storage_dir / "uploads",
                 "other-job": storage_dir / "jobs" / "otherjob1" / "ckpt"}[target]
    elsewhere.mkdir(parents=True)
    victim = elsewhere / ".upload.npz.tmp1a2b"  # what an in-flight write's temp file looks like
    victim.write_bytes(b"not yours")
    job_id = plant_job(r, good_spec("symlinked-ckpt", epochs=1), send_message=False)
    if target == "other-job":
        (storage_dir / "jobs" / job_id).symlink_to(elsewhere.parent, target_is_directory=True)
        link = f"jobs/{job_id}"
    else:
        (storage_dir / "jobs" / job_id).mkdir(parents=True)
        (storage_dir / "jobs" / job_id / "ckpt").symlink_to(elsewhere, target_is_directory=True)
        link = f"jobs/{job_id}/ckpt"
    enqueue(r, job_id, 1, QUEUE)
    run_burst(redis_url, storage_dir)
    error = failed_with(r, job_id)
    expected = "outside storage root" if target == "outside" else "through a symlink; traind never follows"
    assert expected in error and f"path '{link}' resolves to " in error, error
    assert victim.read_bytes() == b"not yours"
    assert sorted(p.name for p in elsewhere.iterdir()) == [victim.name]  # nothing written there either


def _manifest(epoch: int, file: str, sha: str) -> dict[str, object]:
    return {"key": epoch * 10**6, "epoch": epoch, "batch": 0, "attempt": 1, "file": file, "sha256": sha,
            "size": 1, "metrics": {}, "state": {}, "created": 0}


def test_planted_manifests_skip_with_events_delete_nothing_outside_ckpt_and_fall_back(
    client: Client, r: redis.Redis, redis_url: str, storage_dir: Path
) -> None:
    # A real checkpoint to fall back to: epoch 1 of an identical job, copied into the victim job's ckpt/.
    source = client.submit(good_spec("source", epochs=1))
    run_burst(redis_url, storage_dir)
    assert source.status()["state"] == "succeeded"
    good = JobStore(r).checkpoints(source.id)[10**6]

    upload = client.storage.put_arrays({"x": np.arange(4.0)})  # another user's data
    upload_path = storage_dir / "uploads" / f"{upload}.npz"
    url_file = storage_dir / "redis" / "url"  # where `traind up` kept its Redis URL (with the password) before
    url_file.parent.mkdir()
    url_file.write_text("redis://:secret@127.0.0.1:1/0\n")

    job_id = plant_job(r, good_spec("victim", epochs=7, resume_from="latest"), send_message=False)
    ckpt = storage_dir / "jobs" / job_id / "ckpt"
    ckpt.mkdir(parents=True)
    shutil.copy(storage_dir / "jobs" / source.id / good["file"], ckpt)
    odd = ckpt / "e000002-b000000-a1.npz"  # a checkpoint whose arrays are not traind's (KeyError: 'z' before)
    np.savez(odd, z000000=np.zeros(3))
    index = {
        10**6: json.dumps(good),
        2 * 10**6: json.dumps(_manifest(2, "ckpt/e000002-b000000-a1.npz", sha256_file(odd))),
        3 * 10**6: "{not json",
        4 * 10**6: json.dumps(_manifest(4, f"../../uploads/{upload}.npz", upload)),
        5 * 10**6: json.dumps(_manifest(5, "../../redis/url", sha256_file(url_file))),
        6 * 10**6: json.dumps({"epoch": 6}),
    }
    r.hset(keys.checkpoints(job_id), mapping={str(k): v for k, v in index.items()})
    enqueue(r, job_id, 1, QUEUE)
    run_burst(redis_url, storage_dir)

    st = record(r, job_id)
    assert st["state"] == "succeeded", st.get("error")
    assert st["resume_epoch"] == 1  # fell back to the one valid checkpoint
    assert upload_path.exists() and url_file.read_text() == "redis://:secret@127.0.0.1:1/0\n"
    assert client.storage.get_arrays(upload)["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    msgs = [e["msg"] for e in JobStore(r).events(job_id)]
    skipped = [m for m in msgs if m.startswith("skipping checkpoint")]
    assert skipped == [
        "skipping checkpoint epoch 6: manifest is corrupt: missing or invalid batch, sha256, state",
        "skipping checkpoint epoch 5: manifest names file '../../redis/url'; expected a file directly inside the "
        "job's ckpt/ directory (ckpt/<name>.npz)",
        f"skipping checkpoint epoch 4: manifest names file '../../uploads/{upload}.npz'; expected a file directly "
        "inside the job's ckpt/ directory (ckpt/<name>.npz)",
        "skipping checkpoint 3000000: manifest is corrupt: expected a JSON object, received '{not json'",
        "skipping checkpoint epoch 2: checkpoint ckpt/e000002-b000000-a1.npz: unexpected array name(s) "
        "['z000000']; expected w/o/e/m/d + 6 digits",
    ], msgs
    assert any(m.startswith("resuming from fallback checkpoint at epoch 1") for m in msgs), msgs
    not_deleted = [m for m in msgs if m.startswith("not deleting the files of a checkpoint")]
    assert len(not_deleted) == 4, msgs  # entries 3 to 6; entry 2 named a file of this job's own ckpt/: removed
    assert not odd.exists()
    assert [h["epoch"] for h in JobStore(r).history(job_id)] == [2, 3, 4, 5, 6, 7]


def test_manifest_file_names_are_confined_to_ckpt() -> None:
    """The names a manifest may use: ``ckpt/<name>.npz`` and nothing else (pure check, no worker)."""
    from jobs.errors import CheckpointError
    from jobs.storage.ckpt_format import check_manifest

    sha = "a" * 64
    for bad in ["../../uploads/x.npz", "ckpt/../x.npz", "/etc/passwd", "ckpt/.x.npz", "ckpt/sub/x.npz", "x.npz",
                "ckpt/x.npz\n", "ckpt/x.json", 5, None]:
        with pytest.raises(CheckpointError, match="expected a file directly inside the job's ckpt/"):
            check_manifest(_manifest(1, bad, sha))  # type: ignore[arg-type]
    assert check_manifest(_manifest(1, "ckpt/e000001-b000000-a1.npz", sha))["epoch"] == 1
