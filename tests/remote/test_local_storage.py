"""Uploads and downloads through the API when the server's storage is a local directory (no presigned URLs): the
remote client's :class:`~jobs.remote.storage.ApiStorage` falls back to the API for both, byte-exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobs.remote.jobs_api import JobsApi
from jobs.remote.storage import ApiStorage
from jobs.remote.target import ApiTarget
from jobs.remote.transport import Transport
from tests.serve.conftest import TOKEN, Served, served, slow_spec  # noqa: F401 (served: the fixture)


def test_uploads_and_job_files_go_through_the_api(served: Served, storage_dir: Path) -> None:  # noqa: F811
    transport = Transport(ApiTarget(served.url, TOKEN))
    st = ApiStorage(transport)
    arrays = {"x": np.arange(12, dtype="float32").reshape(4, 3), "y": np.ones(4)}
    digest = st.put_arrays(arrays)
    assert st.uploaded == [(f"uploads/{digest}.npz", "api")]
    assert (storage_dir / "uploads" / f"{digest}.npz").is_file()
    assert st.put_arrays(arrays) == digest and st.uploaded[-1][1] == "exists"  # content-addressed: once

    with served.client() as h:
        job_id = h.post("/api/v1/jobs", json={"spec": slow_spec("files")}).json()["id"]
    f = storage_dir / "jobs" / job_id / "best.weights.h5"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"w" * 100_000)
    job_files = st.for_job(job_id)
    assert job_files.read_bytes(f"jobs/{job_id}/best.weights.h5") == b"w" * 100_000
    assert transport.json("GET", f"/api/v1/jobs/{job_id}/file-url",
                          params={"key": f"jobs/{job_id}/best.weights.h5"})["url"] is None
    with pytest.raises(FileNotFoundError):
        job_files.read_bytes(f"jobs/{job_id}/missing.h5")
    assert JobsApi(transport).resolve(job_id[:12]) == job_id
