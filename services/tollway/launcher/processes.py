"""Child processes of the launcher: start with logs in a file, wait until ready, start again, stop."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tollway.launcher import runfile
from tollway.mesh.topology import REPLICA_PORT_STEP, Observability


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


# A stack listens on ports derived from a picked one: replica i on `port + i * REPLICA_PORT_STEP`, each
# instance's metrics on its port plus the metrics offset. A pick claims those of up to this many
# replicas too, so that one stack's derived port is never another picker's pick.
DERIVED_REPLICAS = 4
_METRICS_OFFSET = Observability().metrics_port_offset
DERIVED_OFFSETS = tuple(
    base + i * REPLICA_PORT_STEP for base in (0, _METRICS_OFFSET) for i in range(DERIVED_REPLICAS) if base or i
)


def _family(port: int) -> list[int]:
    """``port`` and the ports a stack may derive from it."""
    return [p for p in (port, *(port + offset for offset in DERIVED_OFFSETS)) if p <= 65535]


def free_ports(count: int, *, span: range | None = None) -> list[int]:
    """``count`` distinct free ports, all held until all are picked, and claimed for this process.

    Picked below the ephemeral range: a port from that range, once free again (a process restarted on
    it, a stack stopped and started anew), can become the local end of any outgoing connection on the
    machine and then cannot be bound until that connection ends. Below it only another listener can
    take the port. Falls back to the kernel's pick when no such port is found.

    A port is only bound some seconds after it is picked (the last of a stack's processes starts after
    the others are ready). So that another process picking in that window (a second test worker, a
    canary controller, a second stack) cannot take it, each pick is claimed on disk
    (`port_claims`) for as long as the picking process lives, and claimed ports are skipped. So are the
    ports a stack would derive from it (`DERIVED_OFFSETS`: replicas, metrics), claimed with it: one
    stack's replica port is then never another's picked port.

    Args:
        count: How many ports.
        span: Where to look first; by default 10000 up to the ephemeral range.
    """
    if span is None:
        low, _ = ephemeral_range()
        top = low - max(DERIVED_OFFSETS)  # derived ports below the ephemeral range too
        span = range(10000, top) if top - 10000 >= 4 * count else range(0)
    sockets: list[socket.socket] = []
    taken: set[int] = set()  # this call's picks and the ports derived from them
    with port_claims() as claims:
        try:
            for port in random.sample(span, min(len(span), 64 * count)):
                if len(sockets) == count:
                    break
                family = _family(port)
                # Not only other processes' claims: a pick must not be a port derived from another
                # pick of the same stack (openai_compat picked on the embedding's metrics port).
                if taken.intersection(family) or any(claims.held(p) for p in family):
                    continue
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    s.close()
                    continue
                sockets.append(s)
                taken.update(family)
            while len(sockets) < count:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                sockets.append(s)
            ports = [int(s.getsockname()[1]) for s in sockets]
            for port in ports:
                for p in _family(port):
                    claims.claim(p)
            return ports
        finally:
            for s in sockets:
                s.close()


def claim_ports(ports: Iterable[int]) -> None:
    """Claims ``ports`` for this process (see `free_ports`), e.g. ports derived from picked ones."""
    with port_claims() as claims:
        for port in ports:
            claims.claim(port)


class PortClaims:
    """Ports picked by live processes of this user, one file per port naming the picking pid.

    Read and written only under `port_claims`' lock. A claim lapses when its process has exited or
    after `CLAIM_MAX_AGE_S` (a pid may be reused by then); a lapsed file is removed when met.
    """

    CLAIM_MAX_AGE_S = 6 * 3600

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def held(self, port: int) -> bool:
        if self.folder is None:
            return False
        path = self.folder / str(port)
        try:
            pid = int(path.read_text() or 0)
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return False
        if pid == os.getpid() or (age < self.CLAIM_MAX_AGE_S and _alive(pid)):
            return True
        path.unlink(missing_ok=True)
        return False

    def claim(self, port: int) -> None:
        if self.folder is not None:
            with contextlib.suppress(OSError):
                (self.folder / str(port)).write_text(str(os.getpid()))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process; it exists
    return True


@contextlib.contextmanager
def port_claims(folder: Path | None = None) -> Iterator[PortClaims]:
    """The machine's port claims, locked against every other picker for the duration.

    ``folder`` defaults to ``$TMPDIR/tollway-port-claims-<uid>``. Where it cannot be made or locked
    (a read-only temp folder), picks go on unclaimed, as before claims existed.
    """
    folder = folder or Path(tempfile.gettempdir()) / f"tollway-port-claims-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        lock = open(folder / ".lock", "a")  # noqa: SIM115  # held open for the block below
    except OSError:
        yield PortClaims(None)
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield PortClaims(folder)


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
