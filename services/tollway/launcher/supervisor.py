"""Keeps the stack's processes running: a child that exits is started again, with backoff.

The policy is a process manager's (systemd's ``Restart=always``, Kubernetes' CrashLoopBackOff): the
first restart comes almost at once, since a one-off crash should cost as little downtime as
possible; a child that keeps dying waits twice as long each time, up to a cap, so a crash loop
does not eat the machine; a child that then stays up for a while is forgiven, and its next crash
is a first one again. It never gives up: only stopping the stack stops the restarts.

Every exit and every recovery is logged (logger ``tollway.launcher`` and ``logs/launcher.log`` in
the run dir), and counted in the run dir's ``status.json``, which ``tollway status`` prints.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tollway.launcher import runfile
from tollway.launcher.processes import Child

log = logging.getLogger("tollway.launcher")


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """How long to wait before starting an exited child again.

    Attributes:
        initial_delay_s: The delay before the first restart after a healthy run.
        multiplier: Each further consecutive restart waits this many times longer.
        max_delay_s: The delay never grows past this.
        reset_after_s: A child that stayed up this long counts as healthy again: its next exit
            waits `initial_delay_s` again.
    """

    initial_delay_s: float = 0.1
    multiplier: float = 2.0
    max_delay_s: float = 30.0
    reset_after_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("initial_delay_s", "max_delay_s", "reset_after_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"RestartPolicy.{name} has value {value!r}; it must be 0 or more")
        if not self.multiplier >= 1:
            raise ValueError(f"RestartPolicy.multiplier has value {self.multiplier!r}; it must be 1 or more")
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError(
                f"RestartPolicy.max_delay_s ({self.max_delay_s!r}) is below initial_delay_s ({self.initial_delay_s!r})"
            )


class Backoff:
    """The restart delays of one child under a `RestartPolicy`; plain state, no clock of its own."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.consecutive = 0  # restarts since the child last stayed up `reset_after_s`

    def next_delay(self, uptime_s: float) -> float:
        """Records an exit after ``uptime_s`` seconds up; returns how long to wait before the restart."""
        p = self.policy
        if uptime_s >= p.reset_after_s:
            self.consecutive = 0
        delay = min(p.max_delay_s, p.initial_delay_s * p.multiplier**self.consecutive)
        if delay < p.max_delay_s:
            # Stop counting once at the cap: the exponent cannot overflow in a long crash loop.
            self.consecutive += 1
        return delay


def describe_exit(returncode: int | None) -> str:
    """``killed by SIGKILL (signal 9)`` or ``exited with code 1``, from a Popen return code."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by {name} (signal {-returncode})"
    return f"exited with code {returncode}"


class State(enum.StrEnum):
    """Where a supervised child is, as `tollway status` prints it."""

    RUNNING = "running"  # started and seen ready
    STARTING = "starting"  # restarted, not ready yet
    BACKOFF = "backoff"  # exited; waiting for its restart
    STOPPED = "stopped"  # the stack stopped it


@dataclasses.dataclass
class _Watched:
    child: Child
    backoff: Backoff
    state: State = State.RUNNING
    restart_count: int = 0
    last_exit: str = ""
    restart_at: float = 0.0
    down_since: float | None = None  # monotonic time of the exit that began the current outage


class Supervisor:
    """Restarts the children it watches until `stop()`.

    Thread-safe: one thread polls the children (cheap: a ``waitpid(WNOHANG)`` per child), restarts
    run under a lock that `stop()` also takes, so once `stop()` returns no restart is in flight and
    none will start, and the caller can stop the children knowing none comes back.
    """

    def __init__(
        self,
        policy: RestartPolicy,
        run_dir: Path,
        *,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.policy = policy
        self.run_dir = run_dir
        self.poll_interval_s = poll_interval_s
        self._watched: list[_Watched] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False  # stop() has finished: no restart will happen any more
        self._started_time = time.time()

    # -- public -------------------------------------------------------------------------------

    def watch(self, child: Child) -> None:
        """Supervises ``child`` from now on; call it once the child is ready. Ignored after stop()."""
        with self._lock:
            if self._stopping.is_set() or any(w.child is child for w in self._watched):
                return
            self._watched.append(_Watched(child, Backoff(self.policy)))
            self._write_status()

    def start(self) -> None:
        """Starts the watching thread. Safe to call more than once."""
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._write_status()
            self._thread = threading.Thread(target=self._run, name="tollway-supervisor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops restarting; returns once no restart is in flight. Does not stop the children.

        Safe before start() and on repeated calls.
        """
        with self._lock:
            self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            for w in self._watched:
                w.state = State.STOPPED
            self._stopped = True
            self._write_status()

    def restart_counts(self) -> dict[str, int]:
        """Restarts per child name, since the stack started."""
        with self._lock:
            return {w.child.name: w.restart_count for w in self._watched}

    def status(self) -> dict[str, Any]:
        """What status.json holds, now."""
        with self._lock:
            return self._status()

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            with self._lock:
                if self._stopping.is_set():
                    return
                changed = False
                for w in self._watched:
                    changed |= self._step(w, time.monotonic())
                if changed:
                    self._write_status()

    def _step(self, w: _Watched, now: float) -> bool:
        if w.state in (State.RUNNING, State.STARTING) and not w.child.alive():
            uptime = now - w.child.started_monotonic
            delay = w.backoff.next_delay(uptime)
            w.last_exit = describe_exit(w.child.process.returncode)
            w.state, w.restart_at = State.BACKOFF, now + delay
            if w.down_since is None:
                w.down_since = now
            self._event(
                logging.WARNING,
                f"{w.child.name} (pid {w.child.process.pid}) {w.last_exit} after {uptime:.1f} s up; "
                f"restart {w.restart_count + 1} in {delay:.1f} s (log: {w.child.log})",
            )
            return True
        if w.state is State.BACKOFF and now >= w.restart_at:
            try:
                w.child.restart()
            except OSError as exc:
                delay = w.backoff.next_delay(0.0)
                w.restart_at = now + delay
                self._event(
                    logging.ERROR, f"{w.child.name} could not be started again ({exc}); next try in {delay:.1f} s"
                )
                return False
            w.restart_count += 1
            w.state = State.STARTING
            threading.Thread(
                target=self._await_ready, args=(w, w.child.process.pid), name=f"ready-{w.child.name}", daemon=True
            ).start()
            return True
        return False

    def _await_ready(self, w: _Watched, pid: int) -> None:
        """Polls the restarted child's readiness probe, then reports how long the outage lasted."""
        child = w.child
        delay = 0.02
        while not self._stopping.is_set() and child.process.pid == pid and child.alive():
            try:
                ready = child.ready() if child.ready is not None else True
            except Exception:  # not up yet: connection refused, partial start
                ready = False
            if ready:
                with self._lock:
                    if self._stopping.is_set() or child.process.pid != pid or w.state is not State.STARTING:
                        return
                    down_s = time.monotonic() - (w.down_since or child.started_monotonic)
                    w.state, w.down_since = State.RUNNING, None
                    self._event(
                        logging.INFO,
                        f"{child.name} (pid {pid}) is {child.what} again, {down_s:.2f} s after it went down "
                        f"(restarts: {w.restart_count})",
                    )
                    self._write_status()
                return
            self._stopping.wait(delay)
            delay = min(delay * 1.5, 0.25)

    # -- reporting ----------------------------------------------------------------------------

    def _event(self, level: int, message: str) -> None:
        log.log(level, message)
        try:
            path = self.run_dir / "logs" / "launcher.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {logging.getLevelName(level)} {message}\n")
        except OSError:
            pass  # the log line above still went out; a full disk must not stop the restarts

    def _status(self) -> dict[str, Any]:
        me = os.getpid()
        return {
            "launcher_pid": me,
            "launcher_start": runfile.start_ticks(me),
            "started_time": self._started_time,
            "stopped": self._stopped,
            "written_time": time.time(),
            "children": [
                {
                    "name": w.child.name,
                    "pid": w.child.process.pid,
                    "state": str(w.state),
                    "restart_count": w.restart_count,
                    "last_exit": w.last_exit,
                    "started_time": w.child.started_time,
                    "log": str(w.child.log),
                }
                for w in self._watched
            ],
        }

    def _write_status(self) -> None:
        try:
            runfile.write_status(self.run_dir, self._status())
        except OSError as exc:
            log.error("could not write %s: %s", self.run_dir / runfile.STATUS, exc)


def format_status(status: dict[str, Any], *, now: float | None = None, alive: Callable[[int], bool]) -> str:
    """The table `tollway status` prints: one line per child, like ``supervisorctl status``.

    Args:
        status: What status.json holds.
        now: The wall-clock time to measure uptimes against (default: now).
        alive: Whether the launcher PID in ``status`` still runs its launcher.
    """
    now = time.time() if now is None else now
    pid = status.get("launcher_pid")
    if status.get("stopped"):
        head = f"tollway up (pid {pid}) has stopped; last known state:"
    elif isinstance(pid, int) and alive(pid):
        head = f"tollway up (pid {pid}) running for {_duration(now - float(status.get('started_time', now)))}"
    else:
        head = f"tollway up (pid {pid}) is gone without stopping its children; last known state:"
    rows = [("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT")]
    for c in status.get("children", []):
        up = _duration(now - float(c.get("started_time", now))) if c.get("state") == "running" else "-"
        rows.append(
            (c["name"], c["state"], str(c["pid"]), up, str(c.get("restart_count", 0)), c.get("last_exit") or "-")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]
    return "\n".join([head, *(line.rstrip() for line in lines)])


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
