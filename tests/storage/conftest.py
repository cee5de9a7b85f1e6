"""Fixtures of the object-storage tests: one moto S3 server per session (a separate process on a free port),
a fresh bucket per test, and a fault-injecting proxy in front of it; the standard AWS variables point at it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from tests.storage.s3server import FaultProxy, MotoS3, s3_env_for


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    srv = MotoS3(tmp_path_factory.mktemp("moto")).start()
    yield srv
    srv.stop()


@pytest.fixture()
def proxy(moto: MotoS3) -> Iterator[FaultProxy]:
    p = FaultProxy(moto.port).up()
    yield p
    p.down()


@pytest.fixture()
def s3_env(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a user sets (AWS_ENDPOINT_URL + keys), applied to this process; through the proxy."""
    env = s3_env_for(proxy.endpoint)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    return env


@pytest.fixture()
def bucket(moto: MotoS3, s3_env: dict[str, str]) -> str:
    name = f"traind-{secrets.token_hex(4)}"
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture()
def s3_url(bucket: str) -> str:
    return f"s3://{bucket}/team/traind"


def private_env(tmp: os.PathLike[str], env: dict[str, str]) -> dict[str, str]:
    """HOME, XDG dirs and TMPDIR private to one process: nothing on disk is shared with another process."""
    base = os.fspath(tmp)
    for d in ("home", "tmp"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    return {**env, "HOME": os.path.join(base, "home"), "XDG_DATA_HOME": os.path.join(base, "home", "data"),
            "XDG_CACHE_HOME": os.path.join(base, "home", "cache"), "TMPDIR": os.path.join(base, "tmp")}
