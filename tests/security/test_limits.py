"""Issue 5.5: limits (TRAIND_MAX_EPOCHS, TRAIND_MAX_SPEC_BYTES, TRAIND_MAX_UPLOAD_BYTES, TRAIND_MAX_HISTORY), each
refused with a message naming the setting, the value received and the limit; at submit and again at the worker.
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import redis

from jobs.client import Client
from jobs.contract import keys
from jobs.contract.spec import parse_spec_text, validate_spec
from jobs.errors import LimitError, SpecError
from jobs.settings import ClientSettings
from jobs.storage.factory import open_storage
from tests.security.helpers import failed_with, good_spec, plant_job, run_burst


def _nothing_recorded(r: redis.Redis) -> None:
    assert r.zcard(keys.JOBS_INDEX) == 0 and not list(r.scan_iter("rq:*")), "a refused job was recorded or queued"


def test_max_epochs(r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir, settings=ClientSettings(max_epochs=10))
    with pytest.raises(SpecError) as ei:
        client.submit(good_spec(epochs=11))
    assert "fit.epochs: 11 exceeds TRAIND_MAX_EPOCHS=10" in str(ei.value)
    _nothing_recorded(r)
    jid = plant_job(r, good_spec(epochs=11))
    run_burst(redis_url, storage_dir, max_epochs=10)
    assert failed_with(r, jid) == "invalid spec: invalid job spec (1 problem(s)):\n  - fit.epochs: 11 exceeds " \
                                  "TRAIND_MAX_EPOCHS=10"


def test_max_spec_bytes(r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    client = Client(redis_url=redis_url, storage=storage_dir, settings=ClientSettings(max_spec_bytes=2048))
    big = good_spec("big", model={"builder": "examples.regression:build_model", "builder_kwargs": {"pad": "x" * 5000}})
    with pytest.raises(LimitError) as ei:
        client.submit(big)
    assert "<spec>: at least " in str(ei.value) and "bytes as JSON exceeds TRAIND_MAX_SPEC_BYTES=2048" in str(ei.value)
    _nothing_recorded(r)
    jid = plant_job(r, big)
    run_burst(redis_url, storage_dir, max_spec_bytes=2048)
    error = failed_with(r, jid)
    # The worker measures the stored JSON before parsing it (issue 8.8).
    assert error.startswith("invalid spec: invalid job spec (1 problem(s)):\n  - <spec>: stored spec of "), error
    assert error.endswith("characters exceeds TRAIND_MAX_SPEC_BYTES=2048; refused before parsing"), error


def test_yaml_alias_bomb_is_refused_quickly() -> None:
    """Nine levels of nine-fold YAML aliases (~387 M strings if expanded): the size check stops counting early."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = "\n".join(lines) + "\nname: bomb\n"
    t0 = time.monotonic()
    data = parse_spec_text(text)
    with pytest.raises(LimitError, match=r"bytes as JSON exceeds TRAIND_MAX_SPEC_BYTES=1000000"):
        validate_spec(data, max_spec_bytes=1_000_000)
    assert time.monotonic() - t0 < 5


def test_max_upload_bytes_client_side(r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    from examples.regression import build_model, load_data

    client = Client(redis_url=redis_url, storage=storage_dir, settings=ClientSettings(max_upload_bytes=4096))
    x, y = load_data(n=2000)
    with pytest.raises(LimitError) as ei:
        client.fit(build_model(units=4), x, y, epochs=1)
    assert "upload: 40" in str(ei.value) and "bytes exceeds TRAIND_MAX_UPLOAD_BYTES=4096" in str(ei.value)
    assert not list((storage_dir / "uploads").glob("*"))
    _nothing_recorded(r)


def test_max_upload_bytes_at_the_worker(client: Client, r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    """An upload larger than the worker's limit (made by a client with a higher one) fails the job."""
    from examples.regression import load_data

    x, y = load_data(n=200)
    digest = open_storage(storage_dir).ensure().put_arrays({"x": x, "y": y})
    size = (storage_dir / "uploads" / f"{digest}.npz").stat().st_size
    job = client.submit(good_spec("big-upload", data={"arrays": digest}))
    run_burst(redis_url, storage_dir, max_upload_bytes=2048)
    assert failed_with(r, job.id) == (f"invalid job spec (1 problem(s)):\n  - upload {digest}: {size} bytes exceeds "
                                      "TRAIND_MAX_UPLOAD_BYTES=2048")


def test_zip_bomb_upload_is_refused_before_inflating(tmp_path: Path) -> None:
    """A small compressed .npz that inflates past the limit is refused as a LimitError (not 'corrupt')."""
    st = open_storage(tmp_path).ensure()
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros(2_000_000), y=np.zeros(2_000_000))  # 32 MB of zeros, ~30 kB compressed
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    st.upload_path(digest).parent.mkdir(parents=True, exist_ok=True)
    st.upload_path(digest).write_bytes(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        inflated = sum(i.file_size for i in zf.infolist())
    with pytest.raises(LimitError) as ei:
        st.get_arrays(digest, max_bytes=1_000_000)
    assert f"upload {digest}: {inflated} bytes uncompressed exceeds TRAIND_MAX_UPLOAD_BYTES=1000000" in str(ei.value)


def test_max_history(client: Client, r: redis.Redis, redis_url: str, storage_dir: Path) -> None:
    """TRAIND_MAX_HISTORY=3 and 5 epochs: the job fails (not 'fenced', not left running) when epoch 4 would be
    recorded; the three recorded epochs stay.
    """
    job = client.submit(good_spec("long", epochs=5))
    run_burst(redis_url, storage_dir, max_history=3)
    error = failed_with(r, job.id)
    assert error == ("invalid job spec (1 problem(s)):\n  - history: recording epoch 4 would exceed "
                     "TRAIND_MAX_HISTORY=3 entries; lower fit.epochs or raise TRAIND_MAX_HISTORY"), error
    assert [h["epoch"] for h in job.history()] == [1, 2, 3]
    assert job.events()[-1]["level"] == "error" and "TRAIND_MAX_HISTORY=3" in job.events()[-1]["msg"]
