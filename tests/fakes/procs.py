"""Real processes the router tests and bench run beside the fakes: a private redis-server,
provider fakes in their own process, and router replicas.

Everything listens on 127.0.0.1 on a free port and runs in a temporary directory; every
``stop()`` is safe to call twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import redis

from tollway.launcher.processes import free_ports

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A port nobody listens on now, below the ephemeral range (see `free_ports`)."""
    return free_ports(1)[0]


def _wait(check: object, what: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout_s}s: {log.read_text(errors='replace')[-2000:]}")


class Proc:
    """A started child process with its log file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the process dies as a crashed provider would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()


class RedisServer:
    """A private redis-server without persistence."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="router-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        self.proc = Proc("redis", argv, self.workdir)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            _wait(client.ping, "redis-server", self.proc.process, self.proc.log)
        except BaseException:
            self.proc.stop()
            raise
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.stop()


class FakeProvider:
    """A provider fake (``tests.fakes.<wire>``) in its own process, killable and restartable."""

    def __init__(self, wire: str, workdir: Path, port: int = 0) -> None:
        self.wire = wire
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", f"tests.fakes.{self.wire}", "--port", str(self.port)]
        self.proc = Proc(f"fake-{self.wire}-{self.port}", argv, self.workdir)
        try:
            _wait(
                lambda: socket.create_connection(("127.0.0.1", self.port), 0.2).close() is None,
                f"fake {self.wire}",
                self.proc.process,
                self.proc.log,
            )
        except BaseException:
            self.proc.stop()
            raise

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class RouterProcess:
    """``python -m tollway.router`` with its own port, the given catalog and Redis."""

    def __init__(
        self, name: str, workdir: Path, catalog: Path, redis_url: str, log_level: str = "INFO", **settings: object
    ) -> None:
        self.port = free_port()
        env = {
            "TOLLWAY_REDIS_URL": redis_url,
            "TOLLWAY_LOG_FORMAT": "text",
            "TOLLWAY_LOG_LEVEL": log_level,
            "TOLLWAY_ROUTER_PORT": str(self.port),
            "TOLLWAY_ROUTER_CATALOG": str(catalog),
            **{f"TOLLWAY_ROUTER_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.proc = Proc(name, [sys.executable, "-m", "tollway.router"], workdir, env)
        self.address = f"127.0.0.1:{self.port}"
        try:
            _wait(self._serving, f"router {name}", self.proc.process, self.proc.log)
        except BaseException:
            self.proc.stop()
            raise

    def _serving(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> None:
        self.proc.stop()
