"""Deployment files: docker-compose.yml as ``docker-compose config`` resolves it, the Dockerfile and .ci/run.

No Docker engine is needed: ``config`` only parses and interpolates. ``.ci/run`` installs Debian's docker-compose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose binary not found (Debian package docker-compose; .ci/run installs it)"
)
PASSWORD = "0123abcdpw"
STORAGE = "s3://traind/checkpoints"
ALLOWED = "mycompany.models"
# The other secrets compose requires (MinIO's admin password, traind's own MinIO secret key).
SECRETS = {"MINIO_ROOT_PASSWORD": "minio-admin-pw", "S3_SECRET_KEY": "traind-s3-secret"}


def compose_config(tmp_path: Path, password: str | None, allowed: str | None = ALLOWED
                   ) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "empty.env"  # a developer's .env must not leak into the test
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_PASSWORD", "TRAIND_ALLOWED_MODULES")}
    env.update(SECRETS)
    if password is not None:
        env["REDIS_PASSWORD"] = password
    if allowed is not None:
        env["TRAIND_ALLOWED_MODULES"] = allowed
    assert COMPOSE is not None
    return subprocess.run(
        [COMPOSE, "--env-file", str(env_file), "--profile", "gpu", "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture()
def config(tmp_path: Path) -> dict[str, Any]:
    res = compose_config(tmp_path, PASSWORD)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


@needs_compose
def test_services(config: dict[str, Any]) -> None:
    by_profile: dict[str, set[str]] = {}
    for name, svc in config["services"].items():  # docker-compose 1.x lists every profile's services
        for prof in svc.get("profiles") or [""]:
            by_profile.setdefault(prof, set()).add(name)
    assert by_profile[""] == {"redis", "minio", "minio-init", "supervisor", "worker-cpu", "serve"}
    assert by_profile["gpu"] == {"worker-gpu"}
    assert by_profile.get("ha", set()) <= {"redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3",
                                           "supervisor-ha", "worker-cpu-ha"}  # tests/ha/test_compose_ha.py
    assert config["services"]["supervisor"]["command"] == ["supervise"]
    assert config["services"]["worker-cpu"]["command"] == ["worker", "--device", "cpu"]


@needs_compose
def test_redis_has_aof_password_and_a_volume(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = [str(c) for c in redis["command"]]
    assert cmd[0] == "redis-server"
    pairs = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert pairs["--appendonly"] == "yes" and pairs["--appendfsync"] == "everysec"
    assert pairs["--requirepass"] == PASSWORD
    vol = redis["volumes"][0]
    name = vol.split(":")[0] if isinstance(vol, str) else vol["source"]
    assert name in config["volumes"]


@needs_compose
def test_every_traind_service_uses_the_s3_store_and_knows_the_password(config: dict[str, Any]) -> None:
    """No shared volume: checkpoints and uploads go to MinIO's bucket, credentials in the standard AWS variables."""
    for name in ("supervisor", "worker-cpu", "worker-gpu"):
        svc = config["services"][name]
        env = svc["environment"]
        assert env["TRAIND_STORAGE_DIR"] == STORAGE
        assert env["TRAIND_REDIS_URL"] == f"redis://:{PASSWORD}@redis:6379/0"
        assert env["TRAIND_ALLOWED_MODULES"] == ALLOWED  # from .env / the environment, never a built-in default
        assert (env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"]) == ("http://minio:9000", "traind")
        assert env["AWS_SECRET_ACCESS_KEY"] == SECRETS["S3_SECRET_KEY"]
        assert not svc.get("volumes"), f"{name} mounts a volume; only Redis and S3 are shared"
        assert svc["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "checkpoints" not in config.get("volumes", {})


@needs_compose
def test_minio_with_its_bucket_created_at_start(config: dict[str, Any]) -> None:
    minio, init = config["services"]["minio"], config["services"]["minio-init"]
    assert minio["image"].startswith("minio/minio") and minio["command"][:2] == ["server", "/data"]
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == SECRETS["MINIO_ROOT_PASSWORD"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert init["image"].startswith("minio/mc") and init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = init["entrypoint"][-1]
    assert "mc mb --ignore-existing local/traind" in script
    assert "mc admin user add local traind" in script  # traind's own user, not MinIO's admin
    assert "MINIO_ROOT_PASSWORD" not in json.dumps(config["services"]["worker-cpu"])


@needs_compose
def test_redis_is_published_with_its_password(config: dict[str, Any]) -> None:
    """A laptop client can submit: Redis is published (loopback by default) and requires the password."""
    ports = config["services"]["redis"]["ports"]
    published = [p if isinstance(p, str) else f"{p.get('host_ip')}:{p['published']}:{p['target']}" for p in ports]
    assert any(p.startswith("127.0.0.1:6379:6379") for p in published), published
    assert "--requirepass" in [str(c) for c in config["services"]["redis"]["command"]]


@needs_compose
@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_storage_secrets_are_required(tmp_path: Path, missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(SECRETS, missing)
    res = compose_config(tmp_path, PASSWORD)
    assert res.returncode != 0
    assert f"set {missing}" in res.stderr


@needs_compose
def test_gpu_worker_reserves_an_nvidia_gpu(config: dict[str, Any]) -> None:
    gpu = config["services"]["worker-gpu"]
    assert gpu["command"] == ["worker", "--device", "gpu:0"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["args"]["EXTRA"] == "gpu"  # the TensorFlow-with-CUDA extra
    assert config["services"]["worker-cpu"]["build"]["args"]["EXTRA"] == "tf"


@needs_compose
def test_a_password_is_required(tmp_path: Path) -> None:
    res = compose_config(tmp_path, None)
    assert res.returncode != 0
    assert "set REDIS_PASSWORD" in res.stderr


@needs_compose
def test_an_allowlist_is_required(tmp_path: Path) -> None:
    """Issue 8.2: no built-in allowlist in deployment either; unset, compose refuses with a clear message."""
    res = compose_config(tmp_path, PASSWORD, allowed=None)
    assert res.returncode != 0
    assert "set TRAIND_ALLOWED_MODULES (e.g. in .env)" in res.stderr, res.stderr


def test_dockerfile_installs_the_package_with_an_extra() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "\nFROM python:3.11-slim\n" in text
    assert "ARG EXTRA=tf" in text and 'pip install ".[${EXTRA}]"' in text
    assert 'ENTRYPOINT ["traind"]' in text


def test_ci_script_is_valid_bash_and_runs_the_readme_test_command() -> None:
    script = ROOT / ".ci" / "run"
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "\npython -m pytest -q\n" in text


@needs_compose
def test_every_service_has_a_healthcheck_and_serve_is_loopback_only(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["supervisor"]["healthcheck"]["test"] == ["CMD", "traind", "health", "--supervisor"]
    for w in ("worker-cpu", "worker-gpu", "worker-cpu-ha"):
        assert services[w]["healthcheck"]["test"] == ["CMD", "traind", "health", "--worker", "local"]
    serve = services["serve"]
    assert serve["command"][0] == "serve" and "/healthz" in " ".join(serve["healthcheck"]["test"])
    assert serve["environment"]["TRAIND_REDIS_URL"] == services["supervisor"]["environment"]["TRAIND_REDIS_URL"]
    assert "TRAIND_API_TOKEN" in serve["environment"]
    ports = [str(p.get("host_ip") if isinstance(p, dict) else p) for p in serve["ports"]]
    assert len(ports) == 1 and ports[0].startswith("127.0.0.1"), ports
