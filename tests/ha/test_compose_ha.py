"""docker-compose's "ha" profile (as ``docker-compose config`` resolves it): a primary, a replica, three sentinels
and traind services on the Sentinel URL. No Docker engine needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.redis.conn import parse_sentinel_url
from tests.conftest import ROOT
from tests.test_compose import COMPOSE, PASSWORD, SECRETS, STORAGE, needs_compose


@pytest.fixture()
def ha_config(tmp_path: Path) -> dict[str, Any]:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    assert COMPOSE is not None
    res = subprocess.run(
        [COMPOSE, "--env-file", str(env_file), "--profile", "ha", "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, env={**os.environ, **SECRETS, "REDIS_PASSWORD": PASSWORD}, capture_output=True, text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


def _args(svc: dict[str, Any]) -> dict[str, str]:
    cmd = [str(c) for c in svc["command"]]
    return {a: b for a, b in zip(cmd, cmd[1:]) if a.startswith("--")}


@needs_compose
def test_ha_profile_has_primary_replica_and_three_sentinels(ha_config: dict[str, Any]) -> None:
    svcs = ha_config["services"]
    assert {"redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3", "supervisor-ha",
            "worker-cpu-ha"} <= set(svcs)
    primary, replica = _args(svcs["redis-primary"]), _args(svcs["redis-replica"])
    assert primary["--requirepass"] == primary["--masterauth"] == PASSWORD  # it must log in once it is a replica
    assert replica["--replicaof"] == "redis-primary" and replica["--masterauth"] == PASSWORD
    for i in (1, 2, 3):
        script = svcs[f"sentinel-{i}"]["command"][-1]
        assert "sentinel monitor traind redis-primary 6379 2" in script
        assert "[ -f /data/sentinel.conf ] ||" in script  # written once: a restart keeps the failover state
        vol = svcs[f"sentinel-{i}"]["volumes"][0]
        assert (vol.split(":")[0] if isinstance(vol, str) else vol["source"]) == f"sentinel-{i}"


@needs_compose
def test_ha_traind_services_use_the_sentinel_url(ha_config: dict[str, Any]) -> None:
    for name in ("supervisor-ha", "worker-cpu-ha"):
        env = ha_config["services"][name]["environment"]
        target = parse_sentinel_url(env["TRAIND_REDIS_URL"])
        assert target.sentinels == [(f"sentinel-{i}", 26379) for i in (1, 2, 3)]
        assert (target.master, target.db, target.password) == ("traind", 0, PASSWORD)
        assert env["TRAIND_STORAGE_DIR"] == STORAGE
