"""Issue 26 item 3: named tokens with roles, stored hashed in Redis, added and revoked without a restart; the owner
of an API submit is the token's name; a submit token changes only its own jobs (real serve + redis-server)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from daemon.cli import main
from daemon.serve.app import create_app
from jobs.contract import keys
from jobs.ops.tokens import Role, TokenStore
from jobs.settings import ServeSettings
from testkit.cluster import RedisServer, free_port
from tests.conftest import ROOT, Procs, log_of, wait_for
from tests.security.serve_helpers import TOKEN as SERVE_TOKEN
from tests.security.serve_helpers import start_serve
from tests.serve.conftest import READ_TOKEN, Served, slow_spec


def _add(capsys: pytest.CaptureFixture[str], redis_url: str, name: str, role: str) -> str:
    """``traind token add NAME --role ROLE``: the token is the only thing on stdout."""
    assert main(["token", "add", name, "--role", role, "--redis-url", redis_url]) == 0
    out, err = capsys.readouterr()
    assert "shown only this once" in err
    return out.strip()


def _every_value(r: redis.Redis) -> list[bytes]:
    """Every key and every stored byte of this Redis."""
    out: list[bytes] = []
    for k in r.scan_iter(count=1000):
        out.append(k)
        t = r.type(k)
        if t == b"string":
            out.append(r.get(k) or b"")
        elif t == b"hash":
            for f, v in r.hgetall(k).items():
                out += [f, v]
        elif t == b"list":
            out += r.lrange(k, 0, -1)
        elif t == b"set":
            out += list(r.smembers(k))
        elif t == b"zset":
            out += [m for m, _ in r.zrange(k, 0, -1, withscores=True)]
        elif t == b"stream":
            out += [json.dumps(e, default=str).encode() for e in r.xrange(k)]
    return out


def _owner(r: redis.Redis, jid: str) -> str | None:
    v = r.hget(keys.job(jid), "owner")
    return v.decode() if v is not None else None


def test_roles_owner_and_hashed_storage(served: Served, redis_url: str, r: redis.Redis,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    alice = _add(capsys, redis_url, "alice", "submit")
    bob = _add(capsys, redis_url, "bob", "submit")
    viewer = _add(capsys, redis_url, "viewer", "read")
    assert alice.startswith("traind_") and len({alice, bob, viewer}) == 3

    with served.client(alice) as a, served.client(bob) as b, served.client(viewer) as v, served.client() as adm:
        # serve's copy is at most 1 s old: polled every 0.3 s, a few 401s, far below the rate limit
        wait_for(lambda: a.get("/api/v1/jobs").status_code == 200, 5, "serve to accept the new tokens", interval=0.3)
        # Owner from the token; a submit token cannot submit for someone else, an admin can.
        resp = a.post("/api/v1/jobs", json={"spec": slow_spec("a1")})
        assert resp.status_code == 201, resp.text
        jid = resp.json()["id"]
        assert _owner(r, jid) == "alice"
        assert a.get(f"/api/v1/jobs/{jid}").json()["owner"] == "alice"
        resp = a.post("/api/v1/jobs", json={"spec": slow_spec("a2"), "owner": "bob"})
        assert resp.status_code == 403 and "only an admin token may submit for another owner" in resp.json()["detail"]
        assert a.post("/api/v1/jobs", json={"spec": slow_spec("a3"), "owner": "alice"}).status_code == 201
        for_bob = adm.post("/api/v1/jobs", json={"spec": slow_spec("b1"), "owner": "bob"}).json()["id"]
        assert _owner(r, for_bob) == "bob"
        by_admin = adm.post("/api/v1/jobs", json={"spec": slow_spec("x1")}).json()["id"]
        assert _owner(r, by_admin) == "admin"  # TRAIND_API_TOKEN is the admin named "admin"

        # A read token reads, and is refused every write before its body is read.
        assert v.get(f"/api/v1/jobs/{jid}").status_code == 200
        for path in ("/api/v1/jobs", f"/api/v1/jobs/{jid}/cancel", f"/api/v1/jobs/{jid}/retry"):
            resp = v.post(path, json={"spec": slow_spec()})
            assert resp.status_code == 403 and "read-only" in resp.json()["detail"], (path, resp.text)
        with served.client(READ_TOKEN) as env_read:  # the env read tokens: unchanged
            assert env_read.post("/api/v1/jobs", json={"spec": slow_spec()}).status_code == 403

        # A submit token changes only its own jobs: 403 with one line naming the owner, and nothing changes.
        resp = b.post(f"/api/v1/jobs/{jid}/cancel")
        assert resp.status_code == 403, resp.text
        detail = resp.json()["detail"]
        assert "belongs to 'alice'" in detail and "'bob'" in detail and "\n" not in detail
        assert a.get(f"/api/v1/jobs/{jid}").json()["state"] == "queued"
        assert a.post(f"/api/v1/jobs/{jid}/cancel").status_code == 200
        assert b.post(f"/api/v1/jobs/{jid}/retry").status_code == 403
        assert a.post(f"/api/v1/jobs/{jid}/retry").status_code == 200
        assert b.post(f"/api/v1/jobs/{for_bob}/cancel").status_code == 200  # bob's own, submitted by the admin
        assert b.post(f"/api/v1/jobs/{by_admin}/cancel").status_code == 403
        assert adm.post(f"/api/v1/jobs/{jid}/cancel").status_code == 200  # admin: everything
        # An unknown job is the route's 404, a job recording no owner (older) is the admin's only.
        assert b.post("/api/v1/jobs/0123456789abcdef0123456789abcdef/cancel").status_code in (404, 422)
        r.hdel(keys.job(by_admin), "owner")
        resp = b.post(f"/api/v1/jobs/{by_admin}/retry")
        assert resp.status_code == 403 and "records no owner" in resp.json()["detail"]
        # A sweep is its owner's: bob's submit token may not cancel alice's sweep, alice's may.
        from jobs.sweep.records import SweepStore

        sid = SweepStore(r).create({"name": "s", "trials": 1}, {}, "minimize", "loss", owner="alice")
        resp = b.post(f"/api/v1/sweeps/{sid}/cancel")
        assert resp.status_code == 403 and "belongs to 'alice'" in resp.json()["detail"]
        assert a.post(f"/api/v1/sweeps/{sid}/cancel").json() == {"id": sid, "previous_state": "running"}

    # Only hashes are stored: no raw token anywhere in Redis (keys, fields, values).
    blob = b"\0".join(_every_value(r))
    for token in (alice, bob, viewer):
        assert token.encode() not in blob and token[7:].encode() not in blob
    assert r.hlen(keys.API_TOKENS) == 3

    # `traind token list`: name, role, created, last used; never a token.
    assert main(["token", "list", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "submit" in out and "viewer" in out and "read" in out
    assert not any(t in out for t in (alice, bob, viewer))
    wait_for(lambda: r.hexists(keys.API_TOKENS_USED, "alice"), 5, "alice's last use to be recorded")
    assert main(["token", "list", "--json", "--redis-url", redis_url]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert listed["alice"]["role"] == "submit" and listed["alice"]["last_used_ms"] > 0
    assert set(listed["alice"]) == {"name", "role", "created_ms", "last_used_ms"}


def test_cli_refuses_bad_names_and_duplicates(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _add(capsys, redis_url, "ci", "submit")
    for name, why in (("ci", "exists already"), ("admin", "reserved"), ("bad name", "expected 1-64")):
        assert main(["token", "add", name, "--role", "read", "--redis-url", redis_url]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err
    assert main(["token", "revoke", "nobody", "--redis-url", redis_url]) == 1
    assert "no stored token named 'nobody'" in capsys.readouterr().err


def test_malformed_token_record_is_one_bad_row(served: Served, r: redis.Redis) -> None:
    good = TokenStore(r).add("good", Role.READ, now_ms=1)
    r.hset(keys.API_TOKENS, mapping={"broken": "{not json", "nohash": json.dumps({"role": "admin", "sha256": "",
                                                                                  "created_ms": 1})})
    with served.client(good) as c:
        assert wait_for(lambda: c.get("/api/v1/jobs").status_code == 200, 5, "the good token to be accepted")
    assert [t.name for t in TokenStore(r).records()] == ["good"]


def test_add_and_revoke_need_no_restart(procs: Procs, redis_url: str, storage_dir: Any, r: redis.Redis,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Against a real `traind serve` process: a token added after it started is accepted at its first request (an
    unknown token re-checks the version), and once revoked it is refused within a second and a half (the cache is
    1 s)."""
    serve = start_serve(procs, redis_url, storage_dir)
    with serve.client(SERVE_TOKEN) as c:  # serve has read the stored tokens (none yet) before the add
        assert c.get("/api/v1/jobs").status_code == 200
    token = _add(capsys, redis_url, "late", "submit")
    with serve.client(token) as c:
        assert c.get("/api/v1/whoami").json() == {"name": "late", "role": "submit"}  # no wait: CI saw a 401 here
        resp = c.post("/api/v1/jobs", json={"spec": slow_spec("late")})
        assert resp.status_code == 201, resp.text
        assert _owner(r, resp.json()["id"]) == "late"
        assert main(["token", "revoke", "late", "--redis-url", redis_url]) == 0
        revoked = time.monotonic()
        wait_for(lambda: c.get("/api/v1/jobs").status_code == 401, 5, "the revoked token to be refused",
                 interval=0.05)
        assert time.monotonic() - revoked < 1.5
    with serve.client(SERVE_TOKEN) as c:  # the env admin token is untouched
        assert c.get("/api/v1/jobs").status_code == 200
    assert token not in serve.log()


def test_documented_serve_acl_user(tmp_path: Path, storage_dir: Path) -> None:
    """docs/deploying.md's `traind-serve` ACL user runs serve with stored tokens (reads, submits, the notification
    subscription); the documented worker user of docs/security.md cannot read or mint a token."""
    from tests.security.test_redis_access import ACL_PASSWORDS, _documented_acl

    doc = (ROOT / "docs" / "deploying.md").read_text().split("<!-- serve-acl -->", 1)[1]
    serve_line = next(ln.strip() for ln in doc.splitlines() if ln.strip().startswith("user traind-serve "))
    srv = RedisServer(tmp_path / "redis-acl").start()
    try:
        admin = redis.Redis.from_url(srv.url)
        for line in sorted([*_documented_acl(), serve_line.replace(">SERVE_PASSWORD", ">s3rve-Pa55")],
                           key=lambda ln: ln.startswith("user default ")):
            name, *rules = line.split()[1:]
            admin.execute_command("ACL", "SETUSER", name, *rules)
        base = f"127.0.0.1:{srv.port}/0"
        serve_url = f"redis://traind-serve:s3rve-Pa55@{base}"
        worker = redis.Redis.from_url(f"redis://traind-worker:{ACL_PASSWORDS['WORKER_PASSWORD']}@{base}")
        for cmd in (("HGETALL", keys.API_TOKENS), ("HSET", keys.API_TOKENS, "mine", "{}")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                worker.execute_command(*cmd)

        token = TokenStore(redis.Redis.from_url(serve_url)).add("carol", Role.SUBMIT, now_ms=1)
        settings = ServeSettings(redis_url=serve_url, storage_dir=storage_dir, port=free_port())
        app = create_app(settings)  # no env token: the stored one is enough to start
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning",
                                               log_config=None))
        t = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        t.start()
        try:
            wait_for(lambda: server.started, 30, "uvicorn to start")
            wait_for(lambda: app.state.hub.connected.is_set(), 30, "the notification subscription")
            with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", timeout=30,
                              headers={"Authorization": f"Bearer {token}"}) as c:
                resp = c.post("/api/v1/jobs", json={"spec": slow_spec("acl")})
                assert resp.status_code == 201, resp.text
                assert c.get(f"/api/v1/jobs/{resp.json()['id']}").json()["owner"] == "carol"
                assert c.post(f"/api/v1/jobs/{resp.json()['id']}/cancel").status_code == 200
            wait_for(lambda: admin.hexists(keys.API_TOKENS_USED, "carol"), 5, "carol's last use to be recorded")
        finally:
            server.should_exit = True
            t.join(30)
    finally:
        srv.stop()


def test_serve_over_its_own_tls(procs: Procs, redis_url: str, storage_dir: Path, tmp_path: Path) -> None:
    """`traind serve --ssl-certfile/--ssl-keyfile` passes them to uvicorn: HTTPS answers, plain HTTP does not; one
    without the other is refused at start in one line."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    half = procs.traind("serve", "--ssl-certfile", str(cert), env={"TRAIND_API_TOKEN": SERVE_TOKEN,
                                                                   "TRAIND_REDIS_URL": redis_url,
                                                                   "TRAIND_STORAGE_DIR": str(storage_dir)},
                        name="serve-half-tls")
    assert half.wait(60) == 2
    assert "TRAIND_SSL_CERTFILE and TRAIND_SSL_KEYFILE go together" in log_of(half)

    port = free_port()
    env = {"TRAIND_API_TOKEN": SERVE_TOKEN, "TRAIND_REDIS_URL": redis_url, "TRAIND_STORAGE_DIR": str(storage_dir),
           "TRAIND_PORT": str(port)}
    p = procs.traind("serve", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), env=env, name="serve-tls")
    base = f"https://127.0.0.1:{port}"

    def up() -> bool:
        assert p.poll() is None, log_of(p)
        try:
            return httpx.get(f"{base}/healthz", verify=str(cert), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, "traind serve to answer over TLS")
    with httpx.Client(base_url=base, verify=str(cert), headers={"Authorization": f"Bearer {SERVE_TOKEN}"}) as c:
        assert c.get("/api/v1/jobs").status_code == 200
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()


def test_token_cache_refresh_and_redis_outage() -> None:
    """Pure logic of serve's copy (a fake source and clock): re-read after the cache time when the version changed
    (and in full every STORED_FULL_RELOAD_S), the last copy kept while Redis is unreadable, then 503 rather than
    'invalid' (which would rate-limit the user for Redis' outage)."""
    import asyncio

    from daemon.serve import auth
    from jobs.ops.tokens import digest

    now, version, down = [0.0], [0], [False]
    rows: dict[Any, Any] = {}
    reads: list[bool] = []  # whether each read returned the hash

    async def source(known: Any) -> tuple[Any, dict[Any, Any] | None]:
        if down[0]:
            raise redis.ConnectionError("down")
        reads.append(known != version[0])
        return version[0], (dict(rows) if known != version[0] else None)

    def change(**kw: Any) -> None:
        rows.clear()
        rows.update({k: json.dumps({"role": v, "sha256": digest(f"traind_{k}"), "created_ms": 1})
                     for k, v in kw.items()})
        version[0] += 1

    def at(t: float) -> None:
        now[0] = t
        asyncio.run(tokens.refresh())

    tokens = auth.Tokens(ServeSettings(api_token=None), source=source, clock=lambda: now[0])
    with pytest.raises(auth.StoredUnavailable):  # never read yet
        tokens.principal("traind_ci")
    change(ci="submit")
    at(0.0)
    assert tokens.principal("traind_ci") == auth.Principal("ci", Role.SUBMIT)
    change()  # revoked
    at(0.5)  # within the cache time: not re-read
    assert tokens.principal("traind_ci") is not None
    at(1.0)
    assert tokens.principal("traind_ci") is None
    at(2.0)
    assert reads == [True, True, False]  # unchanged version: the hash is not read again
    rows["ci"] = json.dumps({"role": "read", "sha256": digest("traind_ci"), "created_ms": 1})  # a hand edit
    at(3.0)
    assert tokens.principal("traind_ci") is None
    at(1.0 + auth.STORED_FULL_RELOAD_S)
    assert tokens.principal("traind_ci") == auth.Principal("ci", Role.READ)  # seen at the next full read

    change(ci="submit")
    down[0] = True
    loaded = tokens.loaded_at
    assert loaded is not None
    at(loaded + 2.0)  # fails: the last copy stays
    assert tokens.principal("traind_ci") == auth.Principal("ci", Role.READ)
    at(loaded + auth.STORED_STALE_MAX_S + 0.1)
    assert auth.judge(tokens, "Bearer traind_ci", auth.Access.READ) is auth.UNAVAILABLE
    down[0] = False
    at(now[0] + 1.0)
    assert auth.judge(tokens, "Bearer traind_ci", auth.Access.WRITE) == auth.Principal("ci", Role.SUBMIT)
    assert auth.judge(tokens, "Bearer nope", auth.Access.READ) is auth.INVALID

    # a token added just now: the unknown token re-reads the version at once, at most every RECHECK_S
    t = now[0]
    change(ci="submit", fresh="read")
    asyncio.run(tokens.recheck_unknown("Bearer traind_fresh"))
    assert tokens.principal("traind_fresh") == auth.Principal("fresh", Role.READ)
    n = len(reads)
    asyncio.run(tokens.recheck_unknown("Bearer traind_nope"))  # within RECHECK_S of the last read: no read
    asyncio.run(tokens.recheck_unknown("Bearer traind_ci"))  # a known token: no read either
    assert len(reads) == n and now[0] == t
    now[0] = t + 2 * auth.RECHECK_S
    asyncio.run(tokens.recheck_unknown("Bearer traind_nope"))
    assert len(reads) == n + 1


def test_tokens_over_http_admin_only(served: Served, r: redis.Redis) -> None:
    with served.client() as adm:
        resp = adm.post("/api/v1/tokens", json={"name": "dave", "role": "submit"})
        assert resp.status_code == 201, resp.text
        dave = resp.json()["token"]
        assert dave.encode() not in b"\0".join(_every_value(r))
        assert adm.post("/api/v1/tokens", json={"name": "dave", "role": "read"}).status_code == 409
        assert adm.post("/api/v1/tokens", json={"name": "admin", "role": "read"}).status_code == 409
        assert adm.post("/api/v1/tokens", json={"name": "no way", "role": "read"}).status_code == 422
        assert adm.post("/api/v1/tokens", json={"name": "x", "role": "root"}).status_code == 422
        with served.client(dave) as d:
            wait_for(lambda: d.get("/api/v1/jobs").status_code == 200, 5, "dave's token to work", interval=0.3)
            for method, path in (("GET", "/api/v1/tokens"), ("DELETE", "/api/v1/tokens/dave")):
                resp = d.request(method, path)
                assert resp.status_code == 403 and "needs an admin token" in resp.json()["detail"]
            assert d.post("/api/v1/tokens", json={"name": "evil", "role": "admin"}).status_code == 403
            listed = adm.get("/api/v1/tokens").json()
            assert [t["name"] for t in listed] == ["dave"] and dave not in json.dumps(listed)
            assert adm.delete("/api/v1/tokens/dave").json() == {"name": "dave", "revoked": True}
            assert adm.delete("/api/v1/tokens/dave").status_code == 404
            wait_for(lambda: d.get("/api/v1/jobs").status_code == 401, 5, "dave's revoked token to be refused")
