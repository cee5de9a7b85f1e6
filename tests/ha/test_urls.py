"""Sentinel URL parsing and redaction (pure logic), and the durability policy on real redis-servers."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.errors import ConfigError, DurabilityError
from jobs.ops import admin
from jobs.redis.conn import connect
from jobs.redis.store import JobStore
from jobs.redis.urls import is_sentinel_url, parse_sentinel_url, redact_url
from jobs.settings import ClientSettings, WorkerSettings
from testkit.cluster import RedisServer


def test_parse_full_url() -> None:
    t = parse_sentinel_url("redis+sentinel://:s3cret@h1:26379,h2:26380,[::1]:26381/traind/3"
                           "?sentinel_password=sp&sentinel_username=su")
    assert t.sentinels == [("h1", 26379), ("h2", 26380), ("::1", 26381)]
    assert (t.master, t.db, t.tls, t.password, t.username) == ("traind", 3, False, "s3cret", None)
    assert (t.sentinel_username, t.sentinel_password) == ("su", "sp")
    assert "s3cret" not in repr(t) and "sp" not in repr(t).replace("sentinels", "")


def test_parse_defaults_and_user() -> None:
    t = parse_sentinel_url("redis+sentinel://app:pw@only-host/main")
    assert t.sentinels == [("only-host", 26379)] and t.db == 0 and (t.username, t.password) == ("app", "pw")
    assert is_sentinel_url("REDIS+SENTINEL://h/m") and not is_sentinel_url("redis://h:6379/0")


def test_parse_tls_options_like_rediss() -> None:
    t = parse_sentinel_url("rediss+sentinel://h1,h2/m/0?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem")
    assert t.tls
    assert t.data_kwargs["ssl_cert_reqs"] in ("none", ssl.CERT_NONE) and t.data_kwargs["ssl_ca_certs"] == "/etc/ca.pem"


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://h1,h2", "no master name"),
    ("redis+sentinel://h1:26379,,h2/m/0", "empty sentinel address"),
    ("redis+sentinel://h1:notaport/m/0", "'notaport'"),
    ("redis+sentinel://h1:70000/m/0", "'70000'"),
    ("redis+sentinel://h1/m/zero", "database 'zero'"),
    ("redis+sentinel://h1/m/0/extra", "unexpected path"),
    ("redis+sentinel://h1/m/0?sentinel_pasword=x", "unknown option(s) sentinel_pasword"),
    ("redis+sentinel://h1/m/0?ssl_ca_certs=/x", "use rediss+sentinel://"),
    ("redis+sentinel://[::1/m/0", "unclosed '['"),
    ("redis://h1/0", "scheme 'redis'"),
])
def test_parse_errors_name_what_was_received(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_sentinel_url(url)
    assert says in str(e.value) and "expected redis+sentinel://" in str(e.value)


@pytest.mark.parametrize("url", ["redis+sentinel://:hunter2@h1:bad/m/0?sentinel_password=hunter3",
                                 "redis+sentinel://:hunter2@[::1/m/0?sentinel_password=hunter3"])
def test_parse_error_does_not_leak_password(url: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_sentinel_url(url)
    assert "hunter2" not in str(e.value) and "hunter3" not in str(e.value)


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://:pw@a:26379,b:26379/m/0", "redis+sentinel://:***@a:26379,b:26379/m/0"),
    ("rediss+sentinel://u:pw@a,b/m/1?sentinel_password=sp&ssl_cert_reqs=none",
     "rediss+sentinel://u:***@a,b/m/1?sentinel_password=***&ssl_cert_reqs=none"),
    ("redis+sentinel://a:26379,b:26379/m/0", "redis+sentinel://a:26379,b:26379/m/0"),
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
])
def test_redaction(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_settings_validate_min_replicas() -> None:
    assert ClientSettings(redis_min_replicas="auto").redis_min_replicas == "auto"
    assert ClientSettings(redis_min_replicas=2).redis_min_replicas == 2
    with pytest.raises(ValueError, match="redis_min_replicas"):
        ClientSettings(redis_min_replicas="sometimes")
    with pytest.raises(ValueError, match=r"TRAIND_REDIS_WAIT_TIMEOUT_S \(5.0\) must be below"):
        ClientSettings(redis_wait_timeout_s=5, redis_socket_timeout_s=3)
    with pytest.raises(ValueError, match=r"TRAIND_DEQUEUE_TIMEOUT_S \(5.0\) must be below"):
        WorkerSettings(dequeue_timeout_s=5, redis_socket_timeout_s=3)


# -- the policy against real servers ---------------------------------------------------------------------------------
@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer(tmp_path / "p").start()
    replica = RedisServer(tmp_path / "r").start()
    yield primary, replica
    replica.stop(kill=True)
    primary.stop(kill=True)


def _store(url: str, **over: object) -> JobStore:
    return JobStore(connect(url, retries=1, settings=ClientSettings(redis_url=url, **over)))


def _replicate(primary: RedisServer, replica: RedisServer) -> None:
    from tests.conftest import wait_for

    rr = redis.Redis.from_url(replica.url)
    rr.replicaof("127.0.0.1", primary.port)
    info = lambda: redis.Redis.from_url(primary.url).info("replication")  # noqa: E731
    wait_for(lambda: info().get("slave0", {}).get("state") == "online", 30, "replica online")


def test_single_server_auto_is_degraded_not_blocking(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, _ = pair
    store = _store(primary.url, redis_wait_timeout_s=20.0)  # a WAIT would block 20 s: auto must not wait
    assert store.create("a1", {"x": 1}) == ("a1", True)
    assert store.r.durability.last == "degraded: the primary has no replica connected"
    assert store.raw("a1")["state"] == "queued"


def test_min_replicas_required_without_replica_raises(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, _ = pair
    store = _store(primary.url, redis_min_replicas=1, redis_wait_timeout_s=0.2)
    with pytest.raises(DurabilityError, match=r"job b1: create: .* only 0 of 1 replica\(s\) confirmed"):
        store.create("b1", {"x": 1})


def test_zero_never_waits(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, _ = pair
    store = _store(primary.url, redis_min_replicas=0)
    store.create("c1", {"x": 1})
    assert store.r.durability.last == "not waited"


def test_replicated_write_is_on_the_replica_when_acknowledged(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = pair
    _replicate(primary, replica)
    store = _store(primary.url)
    store.create("d1", {"x": 1})
    assert store.r.durability.last == "replicated (1)"
    # WAIT returned 1: the replica has it now (replicas apply a write before acknowledging its offset).
    assert redis.Redis.from_url(replica.url).hget("traind:job:d1", "state") == b"queued"


def test_scripts_reload_after_the_server_lost_them(pair: tuple[RedisServer, RedisServer]) -> None:
    primary, _ = pair
    store = _store(primary.url)
    store.create("e1", {"x": 1})
    redis.Redis.from_url(primary.url).script_flush()
    assert store.create("e2", {"x": 1}) == ("e2", True)  # NOSCRIPT: loaded again, the write ran once


def test_unconfirmed_submit_says_the_job_is_queued(pair: tuple[RedisServer, RedisServer], tmp_path: Path) -> None:
    from jobs.client import Client

    primary, _ = pair
    settings = ClientSettings(redis_url=primary.url, storage_dir=str(tmp_path), redis_min_replicas=1,
                              redis_wait_timeout_s=0.2)
    client = Client(settings=settings)
    spec = {"name": "x", "model": {"builder": "examples.regression:build_model"},
            "data": {"loader": "examples.regression:load_data"}, "fit": {"epochs": 1}}
    with pytest.raises(DurabilityError, match=r"only 0 of 1 replica\(s\) confirmed.* is queued and will run") as e:
        client.submit(spec)
    job_id = str(e.value).split("Job ", 1)[1].split(" ", 1)[0]
    from jobs.contract import keys
    from jobs.contract.queue import queue_contents

    raw = client.store.raw(job_id)
    assert raw["state"] == "queued"  # told "queued": it is, and its message is on its queue
    assert keys.rq_job_id(job_id, 1) in queue_contents(client.r, raw["queue"])


def test_sentinel_and_data_passwords(tmp_path: Path) -> None:
    """Both passwords on a real cluster: the right ones replicate; a wrong one fails at once with a clear error."""
    from tests.ha.cluster import SentinelCluster

    with SentinelCluster(tmp_path / "ha", password="data-pw", sentinel_password="sent-pw") as ha:
        store = JobStore(connect(ha.url, retries=3))
        assert store.create("p1", {"x": 1}) == ("p1", True)
        assert store.r.durability.last == "replicated (1)"
        bad_sentinel = ha.url.replace("sentinel_password=sent-pw", "sentinel_password=nope")
        with pytest.raises(redis.AuthenticationError, match="every sentinel refused"):
            connect(bad_sentinel, retries=3).ping()
        with pytest.raises(redis.AuthenticationError):
            connect(ha.url.replace(":data-pw@", ":nope@"), retries=3).ping()
        assert "data-pw" not in redact_url(ha.url) and "sent-pw" not in redact_url(ha.url)


def test_one_node_degraded_is_quiet_but_a_lost_replica_warns(pair: tuple[RedisServer, RedisServer],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Issue 22 item 2: one node (what `traind up` runs) is a normal setup, not a warning on every write; a primary
    that had a replica (it keeps a replication backlog) and lost it is worth one warning."""
    primary, replica = pair
    caplog.set_level("DEBUG", logger="traind.redis")
    store = _store(primary.url)
    store.create("q1", {"x": 1})
    assert store.r.durability.last.startswith("degraded")
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    assert admin.health(store.r) == (True, "redis reachable (single node: writes are not replicated)")
    _replicate(primary, replica)
    redis.Redis.from_url(replica.url).replicaof("NO", "ONE")  # the replica goes away
    caplog.clear()
    store = _store(primary.url)
    store.create("q2", {"x": 1})
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "durability degraded" in warned[0], caplog.text
    assert "no replica online (the primary had one)" in admin.health(store.r)[1]
