"""The object-store backend against a real S3 server (moto, over HTTP, through s3fs/botocore): atomic objects,
verification, retries of transient errors, aborted multipart uploads, and one-line errors when storage is gone."""

from __future__ import annotations

import hashlib

import pytest

from jobs.errors import CheckpointError, StorageUnavailableError
from jobs.storage.factory import open_storage
from jobs.storage.objstore import ObjectStorage
from tests.storage.s3server import FaultProxy, MotoS3


def test_roundtrip_and_verification(s3_url: str, moto: MotoS3, bucket: str) -> None:
    st = open_storage(s3_url)
    assert isinstance(st, ObjectStorage)
    st.check()
    data = b"weights" * 1000
    digest = st.put_bytes("jobs/j1/ckpt/e1.npz", data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert st.read_verified("jobs/j1/ckpt/e1.npz", digest) == data
    # Stored under the prefix, nowhere else.
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team/traind/jobs/j1/ckpt/e1.npz"]
    moto.client().put_object(Bucket=bucket, Key="team/traind/jobs/j1/ckpt/e1.npz", Body=data[:-1])  # torn
    with pytest.raises(CheckpointError, match=r"jobs/j1/ckpt/e1.npz failed its sha256 check \(torn or corrupt\)"):
        st.read_verified("jobs/j1/ckpt/e1.npz", digest)
    with pytest.raises(CheckpointError, match=f"jobs/j1/missing is missing from {s3_url}"):
        st.read_verified("jobs/j1/missing", digest)
    st.delete("jobs/j1/ckpt/e1.npz")
    st.delete("jobs/j1/ckpt/e1.npz")  # idempotent
    assert not st.exists("jobs/j1/ckpt/e1.npz")


def test_503s_are_retried_with_backoff(s3_url: str, proxy: FaultProxy) -> None:
    st = open_storage(s3_url, retry_s=60)
    proxy.fail(6, 503, lambda m, p: m == "PUT")  # more than botocore's own retries: traind's backoff takes over
    digest = st.put_bytes("jobs/j1/x", b"payload")
    assert proxy.pending() == 0
    assert st.read_verified("jobs/j1/x", digest) == b"payload"
    assert [s for m, _, s in proxy.log if m == "PUT"][-1] == 200


def test_a_connection_cut_mid_upload_never_publishes_a_partial_object(s3_url: str, proxy: FaultProxy,
                                                                       moto: MotoS3, bucket: str) -> None:
    st = open_storage(s3_url, retry_s=60)
    data = bytes(range(256)) * 4096
    proxy.cut(2, lambda m, p: m == "PUT")
    digest = st.put_bytes("jobs/j1/big", data)
    body = moto.client().get_object(Bucket=bucket, Key="team/traind/jobs/j1/big")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest == hashlib.sha256(data).hexdigest()
    assert sum(1 for _, _, s in proxy.log if s == -1) == 2


def test_endpoint_down_then_back(s3_url: str, proxy: FaultProxy) -> None:
    """Connection refused (a restarting server) for a while: retried until it is back."""
    import threading

    st = open_storage(s3_url, retry_s=60)
    proxy.down()
    threading.Timer(3.0, proxy.up).start()
    digest = st.put_bytes("jobs/j1/after-restart", b"x")
    assert st.read_verified("jobs/j1/after-restart", digest) == b"x"


def test_retries_give_up_with_one_line(s3_url: str, proxy: FaultProxy) -> None:
    st = open_storage(s3_url, retry_s=1)
    proxy.fail(1000, 503)
    with pytest.raises(StorageUnavailableError) as ei:
        st.put_bytes("jobs/j1/x", b"x")
    assert str(ei.value).startswith(f"storage {s3_url}: could not write jobs/j1/x after ")
    assert "\n" not in str(ei.value)


def test_unfinished_multipart_uploads_are_aborted(s3_url: str, moto: MotoS3, bucket: str) -> None:
    """A writer killed mid multipart upload leaves parts behind; the next attempt aborts them (its job's only)."""
    c = moto.client()
    mine = c.create_multipart_upload(Bucket=bucket, Key="team/traind/jobs/j1/ckpt/e3.npz")
    c.upload_part(Bucket=bucket, Key="team/traind/jobs/j1/ckpt/e3.npz", PartNumber=1, UploadId=mine["UploadId"],
                  Body=b"x" * 1024)
    other = c.create_multipart_upload(Bucket=bucket, Key="team/traind/jobs/j2/ckpt/e1.npz")
    st = open_storage(s3_url)
    assert st.cleanup_incomplete("jobs/j1") == 1
    left = [u["Key"] for u in c.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ["team/traind/jobs/j2/ckpt/e1.npz"]
    assert not st.exists("jobs/j1/ckpt/e3.npz"), "an aborted upload never becomes an object"
    c.abort_multipart_upload(Bucket=bucket, Key="team/traind/jobs/j2/ckpt/e1.npz", UploadId=other["UploadId"])


def test_missing_bucket_is_one_line_naming_the_url(s3_env: dict[str, str]) -> None:
    st = open_storage("s3://no-such-bucket-here/p", retry_s=5)
    with pytest.raises(StorageUnavailableError) as ei:
        st.check()
    assert str(ei.value).startswith("storage s3://no-such-bucket-here/p: bucket 'no-such-bucket-here' does not exist")
    with pytest.raises(StorageUnavailableError, match="bucket 'no-such-bucket-here' does not exist"):
        st.read_bytes("jobs/j1/x")  # not mistaken for a missing object (which would mean "start over")


def test_access_denied_is_not_retried(s3_url: str, proxy: FaultProxy) -> None:
    st = open_storage(s3_url, retry_s=60)
    proxy.fail(1000, 403)
    with pytest.raises(StorageUnavailableError) as ei:
        st.put_bytes("jobs/j1/x", b"x")
    assert str(ei.value).startswith(f"storage {s3_url}: access denied while trying to write jobs/j1/x")
    assert "testing" not in str(ei.value)  # the secret key never appears


def test_streamed_write_spills_to_disk_and_publishes_nothing_on_error(s3_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``open_write`` hashes while spooling (to a temp file past SPOOL_BYTES); an exception publishes nothing."""
    import jobs.storage.objstore as objstore

    monkeypatch.setattr(objstore, "SPOOL_BYTES", 1000)
    st = open_storage(s3_url)
    chunks = [bytes([i]) * 700 for i in range(5)]
    with st.open_write("jobs/j1/streamed.npz") as w:
        for c in chunks:
            w.write(c)
    assert w.size == 3500 and w.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert st.read_verified("jobs/j1/streamed.npz", w.sha256) == b"".join(chunks)
    with pytest.raises(RuntimeError, match="writer died"), st.open_write("jobs/j1/never.npz") as w2:
        w2.write(b"x" * 5000)
        raise RuntimeError("writer died")
    assert not st.exists("jobs/j1/never.npz")
