"""Child processes of the launcher: start with logs in a file, wait until ready, start again, stop."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tollway.launcher import runfile


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


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (Linux's ``ip_local_port_range``)."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, all held until all are picked.

    Picked below the ephemeral range: a port from that range, once free again (a process restarted on
    it, a stack stopped and started anew), can become the local end of any outgoing connection on the
    machine and then cannot be bound until that connection ends. Below it only another listener can
    take the port. Falls back to the kernel's pick when no such port is found.
    """
    low, _ = ephemeral_range()
    candidates = range(10000, low) if low - 10000 >= 4 * count else range(0)
    sockets: list[socket.socket] = []
    try:
        for port in random.sample(candidates, min(len(candidates), 64 * count)):
            if len(sockets) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        while len(sockets) < count:
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
    """One started process, its log file, and what it takes to start it again.

    Attributes:
        name: Its name in logs, the pid file and `tollway status`.
        process: The current process; `restart()` replaces it.
        log: Where its stdout and stderr go (appended to across restarts).
        argv: The command line.
        env: Environment added to the launcher's own.
        cwd: Working directory.
        ready: Whether it serves now (the launcher's probe); None when there is nothing to probe.
        what: What `ready` checks, for messages ("serving on 127.0.0.1:50055").
        started_monotonic: When the current process started (time.monotonic()).
        started_time: The same as a wall-clock time (time.time()), for status output.
        service: The service it is an instance of, if it is one: a restart then runs the code of
            that service's promoted canary, if there is one (`runfile.release_env`).
    """

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: Path | None = None
    ready: Callable[[], bool] | None = None
    what: str = "ready"
    started_monotonic: float = dataclasses.field(default_factory=time.monotonic)
    started_time: float = dataclasses.field(default_factory=time.time)
    service: str | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def restart(self) -> None:
        """Starts the same command again, with the same log, environment and directory.

        Raises:
            OSError: The program could not be executed.
        """
        env = self.env
        if self.service is not None:
            env = {**env, **runfile.release_env(self.log.parent.parent, self.service)}
        self.process = _popen(self.argv, self.log, env, self.cwd)
        self.started_monotonic, self.started_time = time.monotonic(), time.time()
        runfile.record_pid(self.log.parent.parent, self.process.pid, self.name)

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


def _popen(argv: list[str], log: Path, env: dict[str, str], cwd: Path | None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # A session of its own: Ctrl-C in the launcher's terminal reaches the launcher only, which
        # then stops the children in order (and stops restarting them first).
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd, start_new_session=True
        )


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str], cwd: Path | None = None) -> Child:
    """Starts ``argv`` with stdout and stderr in ``log_dir/<name>.log``.

    The PID goes to the run dir's pid file (``log_dir``'s parent), so that a killed run's leftovers
    can still be found and stopped (scripts/test.sh, and the next launcher: `runfile`).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    process = _popen(argv, log, env, cwd)
    runfile.record_pid(log_dir.parent, process.pid, name)
    return Child(name, process, log, argv=list(argv), env=dict(env), cwd=cwd)


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
