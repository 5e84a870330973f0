"""Child processes of the launcher: start with logs in a file, wait until ready, stop."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class LaunchError(RuntimeError):
    """A component could not start; the message says which and why, with its log's tail."""


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nobody is listening on now (the OS picks it)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all sockets stay open until all are picked."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclasses.dataclass
class Child:
    """One started process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``. Safe to call more than once."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str], cwd: Path | None = None) -> Child:
    """Starts ``argv`` with stdout and stderr in ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd, start_new_session=True
        )
    # So that a killed test run's leftovers can still be found and stopped (scripts/test.sh).
    with (log_dir.parent / "pids").open("a") as pids:
        pids.write(f"{process.pid}\n")
    return Child(name, process, log)


def wait_until(child: Child, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Polls ``ready`` until it is true.

    Raises:
        LaunchError: The process exited, or ``timeout_s`` passed; includes the log's tail.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while time.monotonic() < deadline:
        if not child.alive():
            raise LaunchError(
                f"{child.name} exited with code {child.process.returncode} before {what}; "
                f"its log ({child.log}):\n{tail(child.log)}"
            )
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused, partial start
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise LaunchError(f"{child.name} was not {what} within {timeout_s:.0f}s; its log ({child.log}):\n{tail(child.log)}")
