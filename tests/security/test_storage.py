"""Issue 5.3: storage confinement. Job ids and upload digests cannot name paths; symlinks cannot lead writes out of
the storage root; uploads are verified against the sha256 that names them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import redis

from jobs.client import Client
from jobs.contract.ids import validate_job_id
from jobs.errors import InvalidJobIdError, SpecError, StorageError
from jobs.storage.factory import open_storage
from tests.security.helpers import failed_with, good_spec, run_burst

BAD_IDS: list[object] = [
    "a/b", "../x", "..", ".", "/etc", "a\\b", "a\nb", "abc\n", "a\x00b", "\t", "a b", "", "x" * 65, "-abc", "_abc",
    "ａbc", "abc:1", "abc.npz", None, 5, b"abc",
]
ID_EXPECTED = "expected 1-64 characters of [A-Za-z0-9_-], starting with a letter or digit"


@pytest.mark.parametrize("job_id", BAD_IDS, ids=repr)
def test_unsafe_job_ids_are_refused(job_id: object, tmp_path: Path) -> None:
    """Path separators, '..', control characters, empty, too long, non-strings: refused, nothing created."""
    with pytest.raises(InvalidJobIdError) as ei:
        validate_job_id(job_id)
    assert str(ei.value) == f"invalid job id {job_id!r}: {ID_EXPECTED}"
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InvalidJobIdError, match="invalid job id"):
        open_storage(root).job_dir(job_id)  # type: ignore[arg-type]
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("job_id", ["a", "A" * 64, "0-_x", "18c2f9a3b1d4e5f60718"])
def test_safe_job_ids_stay_under_the_root(job_id: str, tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    assert validate_job_id(job_id) == job_id
    assert st.job_dir(job_id) == tmp_path.resolve() / "jobs" / job_id


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "jobs/../../outside", "uploads/../../x"])
def test_confine_refuses_paths_outside_the_root(path: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(StorageError) as ei:
        open_storage(root).confine(path)
    assert f"path {path!r} resolves to " in str(ei.value) and f"outside storage root {root.resolve()}" in str(ei.value)


def test_confine_follows_symlinks(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "jobs").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "jobs" / "abc").symlink_to(elsewhere, target_is_directory=True)
    st = open_storage(root)
    with pytest.raises(StorageError, match=f"resolves to '{elsewhere.resolve()}/x', outside storage root"):
        st.write_bytes_atomic(root / "jobs" / "abc" / "x", b"data")
    with pytest.raises(StorageError, match="outside storage root"):
        st.job_dir("abc")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("digest", ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", "a" * 63 + "\n"])
def test_upload_digests_are_validated(digest: str, tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    for call in (lambda: st.upload_path(digest), lambda: st.get_arrays(digest)):
        with pytest.raises(StorageError) as ei:
            call()
        assert str(ei.value) == f"invalid upload digest {digest!r}: expected 64 hex characters (sha256)"


def test_spec_refuses_non_digest_upload_references() -> None:
    from jobs.contract.spec import validate_spec

    spec = good_spec(data={"arrays": "../../etc/passwd"})
    with pytest.raises(SpecError) as ei:
        validate_spec(spec)
    assert "data.arrays: String should match pattern '^[0-9a-f]{64}$'; received '../../etc/passwd'" in str(ei.value)


def test_uploads_are_verified_against_their_sha256(tmp_path: Path) -> None:
    """A missing, tampered or symlinked upload is refused with a message naming the digest."""
    st = open_storage(tmp_path).ensure()
    digest = st.put_arrays({"x": np.arange(6.0).reshape(3, 2), "y": np.zeros(3)})
    path = st.upload_path(digest)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(st.get_arrays(digest)["x"], np.arange(6.0).reshape(3, 2))

    missing = "0" * 64
    with pytest.raises(StorageError, match=f"upload {missing} not found under {tmp_path.resolve() / 'uploads'}"):
        st.get_arrays(missing)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError) as ei:
        st.get_arrays(digest)
    assert str(ei.value) == f"upload {digest} is corrupt: its sha256 does not match its name"

    outside = tmp_path.parent / f"{tmp_path.name}-outside.npz"
    outside.write_bytes(b"secret")
    other = hashlib.sha256(b"secret").hexdigest()
    os.symlink(outside, st.root / "uploads" / f"{other}.npz")
    with pytest.raises(StorageError, match="outside storage root"):
        st.get_arrays(other)


def test_symlinked_job_dir_is_refused_by_the_worker(
    client: Client, r: redis.Redis, redis_url: str, storage_dir: Path, tmp_path: Path
) -> None:
    """``<root>/jobs/<id>`` -> a directory outside: the job fails with a storage error naming the path."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job = client.submit(good_spec("symlinked-job-dir"))
    (storage_dir / "jobs").mkdir()
    (storage_dir / "jobs" / job.id).symlink_to(elsewhere, target_is_directory=True)
    run_burst(redis_url, storage_dir)
    error = failed_with(r, job.id)
    assert error == (f"path 'jobs/{job.id}' resolves to '{elsewhere.resolve()}', outside storage root "
                     f"{storage_dir.resolve()}"), error
    assert "failed: storage error: path" in job.events()[-1]["msg"]
    assert list(elsewhere.iterdir()) == [], "something was written outside the storage root"


def test_symlinked_checkpoint_dir_is_refused_before_anything_is_listed_or_written(
    client: Client, r: redis.Redis, redis_url: str, storage_dir: Path, tmp_path: Path
) -> None:
    """``<root>/jobs/<id>/ckpt`` -> outside: refused when the attempt starts (before its temp-file cleanup lists the
    directory, issue 8.3); nothing lands outside."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job = client.submit(good_spec("symlinked-ckpt-dir", epochs=3))
    job_dir = storage_dir / "jobs" / job.id
    job_dir.mkdir(parents=True)
    (job_dir / "ckpt").symlink_to(elsewhere, target_is_directory=True)
    run_burst(redis_url, storage_dir)
    error = failed_with(r, job.id)
    # Refused when the attempt starts (cleaning up after interrupted writes resolves the checkpoint dir), before
    # anything is trained or written.
    assert error == (f"path 'jobs/{job.id}/ckpt' resolves to '{elsewhere.resolve()}', outside "
                     f"storage root {storage_dir.resolve()}"), error
    assert list(elsewhere.iterdir()) == [], "a checkpoint was written outside the storage root"
