"""A private redis-server for one test module or bench run (never the shared 6379)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.fakes.procs import free_port
from tollway.mesh.redis import SERVER_SETTINGS

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# TOLLWAY_TEST_REDIS=cluster: local_redis() hands out a 3-master Redis Cluster instead
# (tests/support/redis_cluster.py), so the store suites run against both. Read at import, before
# the tests' autouse fixture clears TOLLWAY_* variables.
TEST_REDIS = os.environ.get("TOLLWAY_TEST_REDIS", "single")
if TEST_REDIS not in ("single", "cluster"):
    raise RuntimeError(f"TOLLWAY_TEST_REDIS has value {TEST_REDIS!r}; use single or cluster")


@dataclasses.dataclass(frozen=True)
class LocalRedis:
    """A running private Redis."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def local_redis(*, appendonly: bool = False, timeout_s: float = 10.0) -> Iterator[LocalRedis]:
    """Starts redis-server on a free loopback port in a temporary directory, stops it after.

    Raises:
        RuntimeError: The server did not answer PING within ``timeout_s``.
    """
    if TEST_REDIS == "cluster":
        from tests.support.redis_cluster import local_redis_cluster

        with local_redis_cluster(appendonly=appendonly) as cluster:
            yield cluster  # type: ignore[misc]  # url and port as LocalRedis has them
        return
    directory = Path(tempfile.mkdtemp(prefix="tollway-cache-redis-"))
    port = free_port()
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--daemonize", "no",
            "--hz", "100",  # blocking reads return closer to their timeout
            "--logfile", str(directory / "redis.log"),
            *SERVER_SETTINGS,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {port} did not start; see {directory}/redis.log"
                    ) from None
                time.sleep(0.02)
        client.close()
        yield LocalRedis(port, directory, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)
