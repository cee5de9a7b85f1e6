"""Issue 21.4 and 21.7 against a real S3 server (moto over HTTP, through the counting proxy): an oversized object at
an upload key is refused before its body is downloaded, and whether a bucket is missing is decided from the S3 error
code, never from the message (which quotes bucket and key names)."""

from __future__ import annotations

import hashlib
import io
import os
import secrets

import numpy as np
import pytest
import redis

from jobs.errors import LimitError, StorageError, StorageUnavailableError
from jobs.storage.factory import open_storage
from jobs.storage.limits import read_capped
from tests.storage.s3server import FaultProxy, MotoS3

LIMIT = 1_000_000


def _plant(moto: MotoS3, bucket: str, key: str, body: bytes) -> None:
    """Put an object straight into the server (not through the proxy: planting is not downloading)."""
    moto.client().put_object(Bucket=bucket, Key=f"team/traind/{key}", Body=body)


def test_oversized_upload_is_refused_before_it_is_downloaded(s3_url: str, moto: MotoS3, bucket: str,
                                                             proxy: FaultProxy) -> None:
    st = open_storage(s3_url, retry_s=5)
    junk = os.urandom(8 * LIMIT)  # what an attacker with bucket access plants at an upload key
    digest = hashlib.sha256(junk).hexdigest()
    _plant(moto, bucket, f"uploads/{digest}.npz", junk)
    before = proxy.bytes_out
    with pytest.raises(LimitError) as ei:
        st.get_arrays(digest, max_bytes=LIMIT)
    assert f"upload {digest}: {len(junk)} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={LIMIT}" in str(ei.value)
    assert proxy.bytes_out - before < LIMIT, f"{proxy.bytes_out - before} bytes downloaded to refuse the object"
    # The same bound for a stored tf.data Dataset (read_verified with a limit), whatever the object's name
    with pytest.raises(LimitError, match=f"dataset upload x: {len(junk)} bytes exceeds"):
        st.read_verified(f"uploads/{digest}.npz", digest, "dataset upload x", max_bytes=LIMIT)
    assert proxy.bytes_out - before < LIMIT


def test_a_worker_fails_the_job_without_downloading_an_oversized_upload(redis_url: str, r: redis.Redis, s3_url: str,
                                                                       moto: MotoS3, bucket: str,
                                                                       proxy: FaultProxy) -> None:
    """The attack of issue 21.4: junk planted at an upload key that a job names; the worker refuses it unread."""
    from jobs.client import Client
    from tests.security.helpers import failed_with, good_spec, run_burst

    junk = os.urandom(8 * LIMIT)
    digest = hashlib.sha256(junk).hexdigest()
    _plant(moto, bucket, f"uploads/{digest}.npz", junk)
    job = Client(redis_url=redis_url, storage=s3_url).submit(good_spec("oversized", data={"arrays": digest}))
    before = proxy.bytes_out
    run_burst(redis_url, s3_url, max_upload_bytes=LIMIT, cache_max_bytes=0)  # type: ignore[arg-type]
    assert failed_with(r, job.id) == (f"invalid job spec (1 problem(s)):\n  - upload {digest}: {len(junk)} bytes "
                                      f"exceeds TRAIND_MAX_UPLOAD_BYTES={LIMIT}")
    assert proxy.bytes_out - before < LIMIT, f"the worker downloaded {proxy.bytes_out - before} bytes"


def test_upload_within_the_limit_is_read_whole_in_bounded_chunks(s3_url: str, proxy: FaultProxy,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.storage.objstore as objstore

    monkeypatch.setattr(objstore, "READ_CHUNK", 64 * 1024)  # several ranged GETs for one object
    st = open_storage(s3_url, retry_s=5)
    x = np.arange(100_000, dtype="float32")
    digest = st.put_arrays({"x": x})
    before, gets = proxy.bytes_out, sum(1 for m, _, _ in proxy.log if m == "GET")
    arrays = st.get_arrays(digest, max_bytes=LIMIT)
    np.testing.assert_array_equal(arrays["x"], x)
    size = len(st.read_bytes(f"uploads/{digest}.npz"))
    assert size <= proxy.bytes_out - before <= 2 * size + 1  # the bounded read + this unbounded check
    assert sum(1 for m, _, _ in proxy.log if m == "GET") - gets > 2


def test_a_read_stops_past_the_limit_even_when_the_size_looked_fine() -> None:
    """The object may grow (or its size be misreported) between the size check and the read: the read itself stops
    after ``limit + 1`` bytes."""

    class Endless(io.RawIOBase):
        read_total = 0

        def read(self, n: int = -1) -> bytes:
            n = 1 << 20 if n < 0 else n
            self.read_total += n
            return b"x" * n

    f = Endless()
    with pytest.raises(LimitError, match=f"upload d: more than {LIMIT} bytes, exceeds TRAIND_MAX_UPLOAD_BYTES"):
        read_capped(f, LIMIT, "upload d", chunk=4096)
    assert f.read_total == LIMIT + 1


def test_local_backend_refuses_an_oversized_object_before_reading(tmp_path: os.PathLike[str]) -> None:
    st = open_storage(os.fspath(tmp_path)).ensure()
    digest = "ab" * 32
    path = st.path(f"uploads/{digest}.npz")  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(8 * LIMIT)  # sparse: large on paper, nothing to read
    with pytest.raises(LimitError, match=f"upload {digest}: {8 * LIMIT} bytes exceeds TRAIND_MAX_UPLOAD_BYTES"):
        st.get_arrays(digest, max_bytes=LIMIT)
    with pytest.raises(LimitError, match="more than 10 bytes"):  # capped while reading, too
        read_capped(open(path, "rb"), 10, "upload x", chunk=3)


def test_a_bucket_named_like_a_bucket_is_not_taken_as_missing(moto: MotoS3, s3_env: dict[str, str]) -> None:
    name = f"my-bucket-data-{secrets.token_hex(3)}"
    moto.client().create_bucket(Bucket=name)
    st = open_storage(f"s3://{name}/team", retry_s=5)
    st.check()
    assert not st.exists("jobs/j1/missing.npz")  # a missing object, not a missing bucket
    with pytest.raises(FileNotFoundError):
        st.read_bytes("jobs/j1/missing.npz")
    with pytest.raises(StorageError, match=f"upload {'ab' * 32} not found under s3://{name}/team/uploads"):
        st.get_arrays("ab" * 32)
    digest = st.put_bytes("jobs/j1/x", b"payload")
    assert st.read_verified("jobs/j1/x", digest) == b"payload"


def test_a_missing_bucket_is_told_by_its_error_code(s3_url: str, proxy: FaultProxy) -> None:
    """The server says NoSuchBucket with a message that never mentions a bucket: the code decides."""
    st = open_storage(s3_url, retry_s=5)
    digest = st.put_bytes("jobs/j1/x", b"payload")
    proxy.fail(1000, 404, lambda m, p: m == "GET")  # <Code>NoSuchBucket</Code><Message>injected by the test proxy
    with pytest.raises(StorageUnavailableError, match=f"bucket '{s3_url.split('/')[2]}' does not exist"):
        st.read_bytes("jobs/j1/x")
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        st.read_verified("jobs/j1/x", digest)
