"""A private Redis Cluster for tests and benches: Debian's redis-server in cluster mode.

`local_redis_cluster()` starts `masters` nodes (and `replicas` replicas per master) on free loopback
ports, joins them with `redis-cli --cluster create`, and waits until every node reports
`cluster_state:ok`. `TOLLWAY_TEST_REDIS=cluster` makes `tests.support.redis_server.local_redis()`
hand out one of these instead of a single server, so the store suites run against both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.fakes.procs import free_port
from tollway.mesh.redis import SERVER_SETTINGS

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


@dataclasses.dataclass
class ClusterNode:
    """One redis-server of the cluster."""

    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes]
    appendonly: bool
    appendfsync: str = "always"

    def start(self) -> None:
        """Starts the node (again), with the same ports, data directory and nodes.conf."""
        self.process = _spawn(self.port, self.bus_port, self.directory, self.appendonly, self.appendfsync)

    def kill(self) -> None:
        """SIGKILL: the node dies as in a crash (no AOF rewrite, no goodbye to the cluster)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def role(self) -> str:
        """`master` or `slave`, as the node itself says."""
        with contextlib.closing(self.client()) as c:
            role = c.execute_command("ROLE")[0]
        return role.decode() if isinstance(role, bytes) else str(role)


@dataclasses.dataclass
class LocalRedisCluster:
    """A running private Redis Cluster."""

    nodes: list[ClusterNode]
    directory: Path

    @property
    def url(self) -> str:
        """`redis+cluster://` with every node as a seed (tollway.mesh.redis.connect)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def port(self) -> int:
        """The first node's port (for code written against a single server)."""
        return self.nodes[0].port

    def masters(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.process.poll() is None and n.role() == "master"]

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and every slot is served."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for n in self.nodes:
                if n.process.poll() is not None:
                    continue
                try:
                    with contextlib.closing(n.client()) as c:
                        info = c.cluster("info")  # parsed into a dict by redis-py
                    states.append(info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == 16384)
                except redis.RedisError:
                    states.append(False)
            if states and all(states) and all(self._replica_synced(n) for n in self.nodes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster in {self.directory} is not ok after {timeout_s:.0f}s")
            time.sleep(0.1)

    @staticmethod
    def _replica_synced(node: ClusterNode) -> bool:
        """A live replica has finished its first sync (only then can it take over its master)."""
        if node.process.poll() is not None:
            return True
        try:
            with contextlib.closing(node.client()) as c:
                info = c.info("replication")
        except redis.RedisError:
            return False
        return info.get("role") != "slave" or info.get("master_link_status") == "up"

    def flush(self) -> None:
        for n in self.masters():
            with contextlib.closing(n.client()) as c:
                c.flushall()


def _spawn(port: int, bus_port: int, directory: Path, appendonly: bool, appendfsync: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--port", str(port),
            # The bus defaults to port + 10000, which a free port above 55535 cannot have.
            "--cluster-port", str(bus_port),
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", appendfsync,
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "1000",  # a dead master is failed over within seconds
            # A replica may always take over (Redis refuses by default when its link to the master
            # has been down "too long", which on a loaded machine happens within seconds).
            "--cluster-replica-validity-factor", "0",
            "--daemonize", "no",
            "--hz", "100",
            "--logfile", str(directory / "redis.log"),
            *SERVER_SETTINGS,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


@contextlib.contextmanager
def local_redis_cluster(
    *, masters: int = 3, replicas: int = 0, appendonly: bool = False, appendfsync: str = "always",
    timeout_s: float = 30.0,
) -> Iterator[LocalRedisCluster]:
    """Starts a Redis Cluster of ``masters`` masters, each with ``replicas`` replicas; stops it after.

    Args:
        masters: Masters (3 is the least `redis-cli --cluster create` accepts).
        replicas: Replicas per master (1 to survive a master's death by failover).
        appendonly: AOF on.
        appendfsync: `always` (the default: an acknowledged write is on disk, which the failover
            bench checks) or `everysec` (as deploy/mesh.yaml's Redis, for like-for-like timings).
        timeout_s: How long the cluster may take to form.

    Raises:
        RuntimeError: A node did not start, or the cluster did not form in time.
    """
    directory = Path(tempfile.mkdtemp(prefix="tollway-redis-cluster-"))
    nodes: list[ClusterNode] = []
    try:
        for i in range(masters * (1 + replicas)):
            port, bus = free_port(), free_port()
            node_dir = directory / f"node-{i}"
            process = _spawn(port, bus, node_dir, appendonly, appendfsync)
            nodes.append(ClusterNode(port, bus, node_dir, process, appendonly, appendfsync))
        deadline = time.monotonic() + timeout_s
        for n in nodes:
            while True:
                try:
                    with contextlib.closing(n.client()) as c:
                        c.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or n.process.poll() is not None:
                        raise RuntimeError(f"redis-server on port {n.port} did not start; see {n.directory}") from None
                    time.sleep(0.02)
        created = subprocess.run(
            [
                REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas", str(replicas), "--cluster-yes",
            ],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-2000:]}")
        cluster = LocalRedisCluster(nodes, directory)
        cluster.wait_ok(timeout_s)
        yield cluster
    finally:
        for n in nodes:
            if n.process.poll() is None:
                n.process.terminate()
        for n in nodes:
            try:
                n.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                n.process.kill()
                n.process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def sync_client(url: str) -> redis.Redis:
    """A blocking client for a test's own look at the data: a cluster client for a `redis+cluster://` URL."""
    if url.startswith("redis+cluster://"):
        host, _, port = url.removeprefix("redis+cluster://").split(",")[0].rpartition(":")
        return redis.RedisCluster(host=host, port=int(port))  # type: ignore[return-value]
    return redis.Redis.from_url(url)
