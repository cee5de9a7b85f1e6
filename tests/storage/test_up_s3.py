"""`traind up --storage s3://…`: the local stack (embedded Redis, supervisor, worker) with checkpoints in S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.storage.conftest import private_env
from tests.storage.s3server import MotoS3


def test_up_example_with_s3_storage(tmp_path: Path, s3_env: dict[str, str], bucket: str, moto: MotoS3) -> None:
    env = private_env(tmp_path / "box", {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")})
    url = f"s3://{bucket}/stack"
    res = subprocess.run([sys.executable, "-m", "daemon.cli", "up", "--example", "--storage", url, "--timeout", "400"],
                         cwd=ROOT, env={**env, **s3_env}, capture_output=True, text=True, timeout=500)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "succeeded" in out and f"storage     {url}" in out, out[-4000:]
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    exports = [k for k in keys if k.startswith("stack/jobs/") and k.endswith("/best.weights.h5")]
    assert len(exports) == 1, keys
    assert any(k.startswith("stack/jobs/") and "/ckpt/" in k for k in keys)
    # The embedded Redis and the logs live in the local data dir; no checkpoint was written locally.
    home = Path(env["XDG_DATA_HOME"]) / "traind"
    assert (home / "logs").is_dir()
    assert not (home / "jobs").exists()
