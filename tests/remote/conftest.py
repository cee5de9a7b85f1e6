"""One real stack for tests/remote, shared by the module: redis-server, a moto S3 server, ``traind serve`` and one
``traind worker`` (separate processes, storage ``s3://``), and a way to run "laptop" processes whose environment
holds only ``TRAIND_API_URL`` + ``TRAIND_API_TOKEN`` (no Redis URL, no storage setting, no ``AWS_*``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from testkit.cluster import RedisServer, free_port, wait_for
from tests.conftest import ALLOWED, ROOT, Procs
from tests.storage.conftest import private_env
from tests.storage.s3server import MotoS3

TOKEN = "remote-full-token-7c1e99"
READ_TOKEN = "remote-read-token-41d0aa"
MAX_UPLOAD = 400_000  # room for the tests' data; the over-limit test goes past it


@dataclass
class Stack:
    url: str
    redis_url: str
    s3_url: str
    moto: MotoS3
    bucket: str
    tmp: Path
    procs: Procs
    laptop: subprocess.Popen[bytes] | None = None  # tests/remote/laptop.py, started with the stack (it runs meanwhile)

    def http(self, token: str | None = TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"} if token else {},
                            timeout=30.0)

    def laptop_env(self, name: str, **extra: str) -> dict[str, str]:
        """A laptop's environment: its own HOME/TMPDIR, the API's URL and token, nothing else of traind or AWS."""
        keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TF_CPP_MIN_LOG_LEVEL") if k in os.environ}
        env = private_env(self.tmp / name, {**keep, "PYTHONPATH": str(ROOT), "TRAIND_API_URL": self.url,
                                            "TRAIND_API_TOKEN": TOKEN, **extra})
        assert not [k for k in env if k.startswith("AWS_") or k in ("TRAIND_REDIS_URL", "TRAIND_STORAGE_DIR")]
        return env

    def cli(self, *args: str, timeout: float = 60, drop: tuple[str, ...] = (),
            **extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.laptop_env("cli", **extra).items() if k not in drop}
        return subprocess.run([sys.executable, "-m", "daemon.cli", *args], env=env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("remote")
    redis_srv = RedisServer(tmp / "redis").start()
    moto = MotoS3(tmp).start()
    bucket = "traind-remote"
    moto.client().create_bucket(Bucket=bucket)
    s3_url = f"s3://{bucket}/team"
    procs = Procs(tmp)
    port = free_port()
    server_env = {**MotoS3.env(moto.endpoint), "TRAIND_ALLOWED_MODULES": ALLOWED, "TRAIND_API_TOKEN": TOKEN,
                  "TRAIND_API_READ_TOKENS": READ_TOKEN, "TRAIND_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
                  "TRAIND_LEASE_TTL_S": "2", "TRAIND_SSE_HEARTBEAT_S": "1"}
    common = ("--redis-url", redis_srv.url, "--storage", s3_url)
    try:
        serve = procs.traind("serve", "--port", str(port), *common, env=server_env, name="serve")
        procs.traind("worker", *common, env={**private_env(tmp / "worker", dict(os.environ)), **server_env,
                                             "TRAIND_PROGRESS_INTERVAL_S": "0"}, name="worker")
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert serve.poll() is None, Path(serve.log_path).read_text()  # type: ignore[attr-defined]
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "traind serve")
        st = Stack(url, redis_srv.url, s3_url, moto, bucket, tmp, procs)
        # The laptop (TensorFlow's import, two fits) runs while the other tests drive the CLI: less wall time
        out = open(tmp / "laptop.log", "wb")  # closed with the process
        st.laptop = subprocess.Popen([sys.executable, str(Path(__file__).with_name("laptop.py")), "150"],
                                     env=st.laptop_env("laptop"), cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        st.laptop.log_path = out.name  # type: ignore[attr-defined]
        procs.procs.append(st.laptop)
        yield st
    finally:
        procs.kill_all()
        moto.stop()
        redis_srv.stop()
