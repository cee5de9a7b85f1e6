"""A real Redis Sentinel deployment for tests and benchmarks: a primary, a replica (``--replicaof``) and three
sentinels (``redis-server --sentinel`` with a config file each), all on free ports with their own dirs.

Small ``down-after-milliseconds`` / ``failover-timeout`` keep a failover to a few seconds.

>>> # with SentinelCluster(tmp_path) as ha: ha.url  # redis+sentinel://127.0.0.1:p1,.../traind/0
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from testkit.cluster import free_port

MASTER = "traind"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _wait(cond: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
        except (redis.RedisError, OSError):
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Node:
    """One redis-server process (data node or sentinel)."""

    def __init__(self, workdir: Path, name: str, password: str | None = None) -> None:
        self.password = password
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.args: list[str] = []

    def start(self, args: list[str]) -> Node:
        self.args = list(args)
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server not found on PATH: install it (apt-get install redis-server)")
        log = open(self.dir / "server.log", "wb")  # lives as long as the process
        self.proc = subprocess.Popen([exe, *args], cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: self.client().ping(), 15, f"{self.name} on port {self.port}")
        return self

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout,
                           password=self.password)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a frozen node cannot act on SIGKILL's cleanup otherwise
            except ProcessLookupError:
                pass
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class SentinelCluster:
    """Primary ``nodes[0]``, replica ``nodes[1]``, sentinels ``sentinels[0..2]`` (quorum 2)."""

    def __init__(self, workdir: Path, down_after_ms: int = DOWN_AFTER_MS,
                 failover_timeout_ms: int = FAILOVER_TIMEOUT_MS, password: str | None = None,
                 sentinel_password: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.password, self.sentinel_password = password, sentinel_password
        self.nodes = [Node(self.workdir, "primary", password), Node(self.workdir, "replica", password)]
        self.sentinels = [Node(self.workdir, f"sentinel{i}", sentinel_password) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        auth = f":{self.password}@" if self.password else ""
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"redis+sentinel://{auth}{hosts}/{MASTER}/0{query}"

    def start(self) -> SentinelCluster:
        base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:  # masterauth: a node must log in to the primary whenever it is (or becomes) a replica
            base += ["--requirepass", self.password, "--masterauth", self.password]
        primary, replica = self.nodes
        primary.start(["--port", str(primary.port), "--dir", str(primary.dir), *base])
        replica.start(["--port", str(replica.port), "--dir", str(replica.dir), *base,
                       "--replicaof", "127.0.0.1", str(primary.port)])
        _wait(lambda: self.replication(replica).get("master_link_status") == "up", 30, "replica in sync")
        # The primary's side too: WAIT counts only replicas it has marked online.
        _wait(lambda: self.replication(primary).get("slave0", {}).get("state") == "online", 30, "replica online")
        for s in self.sentinels:
            conf = s.dir / "sentinel.conf"  # sentinels rewrite their config file: one writable file each
            conf.write_text(
                f"port {s.port}\nbind 127.0.0.1\ndir {s.dir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
                + (f"sentinel auth-pass {MASTER} {self.password}\n" if self.password else "")
                # A sentinel's own password; sentinels use it to log in to each other too.
                + (f"requirepass {self.sentinel_password}\n" if self.sentinel_password else "")
            )
            s.start([str(conf), "--sentinel"])
        # Every sentinel sees the replica and the two other sentinels before a test may fail anything over.
        for s in self.sentinels:
            _wait(lambda s=s: self._sentinel_ready(s), 30, f"{s.name} to discover the replica and its peers")
        return self

    def _sentinel_ready(self, s: Node) -> bool:
        m = s.client().sentinel_master(MASTER)
        return int(m.get("num-slaves", 0)) >= 1 and int(m.get("num-other-sentinels", 0)) >= 2

    @staticmethod
    def replication(node: Node) -> dict[str, Any]:
        return node.client().info("replication")

    def primary_port(self) -> int | None:
        """The primary's port as a majority of sentinels report it (None while they disagree or are down)."""
        seen: dict[int, int] = {}
        for s in self.sentinels:
            try:
                _, port = s.client().sentinel_get_master_addr_by_name(MASTER)
                seen[int(port)] = seen.get(int(port), 0) + 1
            except (redis.RedisError, OSError, TypeError):
                continue
        best = max(seen.items(), key=lambda kv: kv[1], default=(None, 0))
        return best[0] if best[1] >= 2 else None

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def current_primary(self) -> Node:
        port = self.primary_port()
        assert port is not None, "sentinels do not agree on a primary"
        return self.node(port)

    def wait_failover(self, old: Node, timeout: float = 60.0) -> Node:
        """Until the sentinels report another node as primary and that node accepts writes."""
        port = _wait(lambda: (lambda p: p if p not in (None, old.port) else None)(self.primary_port()), timeout,
                     f"sentinels to promote a new primary (old port {old.port})")
        new = self.node(port)
        _wait(lambda: self.replication(new).get("role") == "master", timeout, "the promoted node to be a primary")
        return new

    def wait_replica_of(self, node: Node, primary: Node, timeout: float = 60.0) -> None:
        """Until ``node`` is a replica of ``primary`` with its link up (a full resync discards its own data)."""
        def ok() -> bool:
            info = self.replication(node)
            return (info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port
                    and info.get("master_link_status") == "up")

        _wait(ok, timeout, f"{node.name} to rejoin as a replica of port {primary.port}")

    def revive(self, node: Node, primary: Node, timeout: float = 60.0) -> None:
        """Start a killed data node again as a replica of ``primary`` (what an operator does after a failover)
        and wait until it is in sync and every sentinel counts it as a healthy replica."""
        args = [a for a in node.args]
        if "--replicaof" in args:
            i = args.index("--replicaof")
            del args[i:i + 3]
        node.start([*args, "--replicaof", "127.0.0.1", str(primary.port)])
        self.wait_replica_of(node, primary, timeout)
        for s in self.sentinels:
            _wait(lambda s=s: self._sees_replica(s, node), timeout, f"{s.name} to see {node.name} as a replica")

    def _sees_replica(self, s: Node, node: Node) -> bool:
        for rep in s.client().sentinel_slaves(MASTER):
            if int(rep["port"]) == node.port:
                return not (rep.get("is_sdown") or rep.get("is_odown") or rep.get("is_disconnected"))
        return False

    def stop(self) -> None:
        for n in [*self.sentinels, *self.nodes]:
            n.stop()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
