"""What the launcher leaves in its run dir for the next launcher, scripts/test.sh and `tollway status`.

Two files:

- ``pids``: one line per process the launcher started, ``PID START_TICKS NAME``. START_TICKS is the
  process's start time in clock ticks since boot (``/proc/PID/stat``, field 22). A PID alone can be
  reused by an unrelated process after ours died; PID and start time together name one process for
  the life of the machine, so a later launcher can prove that a live PID is still *its* leftover
  before it stops it. Lines with a PID only (written by test fixtures) are read too.
- ``status.json``: the launcher's own PID and start time, and per child its PID, state, restart
  count, last exit and start time; rewritten (atomically) by the supervisor on every change.

Canaries (`tollway canary`) add ``stack.json`` (how the launcher starts a service, so that another
process can start one more instance the same way) and ``releases/<service>.json`` (the code and
environment a promoted canary left for the service's stable instances, used when they restart).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PIDS = "pids"
STATUS = "status.json"


def start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, or None if it is not running.

    None too where there is no /proc (not Linux): callers then cannot prove a PID is theirs.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return None  # a zombie: dead, only waiting for its parent to reap it
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class PidEntry:
    """One line of the pid file."""

    pid: int
    start: int | None = None
    name: str = ""

    def line(self) -> str:
        return f"{self.pid} {self.start if self.start is not None else '-'} {self.name}".rstrip() + "\n"

    @classmethod
    def parse(cls, line: str) -> PidEntry | None:
        parts = line.split()
        if not parts or not parts[0].isdigit():
            return None
        start = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        return cls(int(parts[0]), start, parts[2] if len(parts) > 2 else "")


def record_pid(run_dir: Path, pid: int, name: str) -> None:
    """Appends a started process to the run dir's pid file (scripts/test.sh kills what is left)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / PIDS).open("a") as f:
        f.write(PidEntry(pid, start_ticks(pid), name).line())


@dataclasses.dataclass
class Cleanup:
    """What `clean_pid_file` found: leftovers it stopped, and how many stale lines it dropped."""

    stopped: list[PidEntry] = dataclasses.field(default_factory=list)
    dropped: int = 0
    kept: int = 0


def clean_pid_file(
    run_dir: Path,
    *,
    ticks: Callable[[int], int | None] = start_ticks,
    terminate: Callable[[int], None] | None = None,
) -> Cleanup:
    """Empties the pid file of a previous run, stopping only what provably is its leftover.

    Per line:
    - PID and start time match a live process: a child of a launcher that died without stopping it
      (SIGKILL, a crash). It still holds its port, so a new start would fail; it is stopped.
    - The process is gone, or the PID now belongs to a process that started at another time: the
      line is stale and dropped. Nothing is signalled: the PID is somebody else's now.
    - A PID without a start time (a test fixture's line) whose process is alive: kept as it is,
      neither stopped (it cannot be proven ours) nor forgotten (scripts/test.sh still needs it).

    Call it only when no live launcher uses the run dir (see `live_launcher`).

    Args:
        run_dir: The run dir.
        ticks: Reads a PID's start time (injected by unit tests).
        terminate: Stops a PID (default: SIGTERM, SIGKILL after 5 s).

    Returns:
        What was stopped, dropped and kept.
    """
    path = run_dir / PIDS
    result = Cleanup()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return result
    stop = terminate or _terminate
    keep: list[str] = []
    for line in lines:
        entry = PidEntry.parse(line)
        if entry is None:
            result.dropped += 1
            continue
        now = ticks(entry.pid)
        if entry.start is None:
            if now is not None:
                keep.append(line + "\n")
                result.kept += 1
            else:
                result.dropped += 1
        elif now == entry.start:
            stop(entry.pid)
            result.stopped.append(entry)
        else:
            result.dropped += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)
    return result


def _terminate(pid: int, timeout_s: float = 5.0) -> None:
    start = start_ticks(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if start_ticks(pid) != start:
            return
        time.sleep(0.05)
    if start_ticks(pid) == start:
        os.kill(pid, signal.SIGKILL)


# -- status -----------------------------------------------------------------------------------


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Replaces status.json in one rename, so a reader never sees half a file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STATUS + ".tmp")
    tmp.write_text(json.dumps(status, indent=1) + "\n")
    tmp.replace(run_dir / STATUS)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The last status a launcher wrote there, or None when there is none (or it is unreadable)."""
    try:
        value = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def live_launcher(run_dir: Path, *, ticks: Callable[[int], int | None] = start_ticks) -> int | None:
    """The PID of a launcher that is running now with this run dir, other than this process."""
    status = read_status(run_dir)
    if not status:
        return None
    pid, start = status.get("launcher_pid"), status.get("launcher_start")
    if not isinstance(pid, int) or pid == os.getpid() or start is None:
        return None
    return pid if ticks(pid) == start else None


# -- canaries -----------------------------------------------------------------------------------

STACK = "stack.json"
RELEASES = "releases"


def write_stack(run_dir: Path, description: dict[str, Any]) -> None:
    """Records how the running launcher starts services (`Stack.describe()`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STACK + ".tmp")
    tmp.write_text(json.dumps(description, indent=1) + "\n")
    tmp.chmod(0o600)  # the services' extra environment may hold settings others should not read
    tmp.replace(run_dir / STACK)
    # A new launcher starts every service from the checkout: releases of an earlier run are gone.
    for old in (run_dir / RELEASES).glob("*.json"):
        old.unlink()


def read_stack(run_dir: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((run_dir / STACK).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_release(run_dir: Path, service: str, code_dir: str | None, env: dict[str, str], version: str) -> None:
    """Makes the service's instances run ``code_dir``'s code with ``env`` from their next restart."""
    path = run_dir / RELEASES / f"{service}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"code_dir": code_dir, "env": env, "version": version}) + "\n")
    tmp.replace(path)


def release_env(run_dir: Path, service: str) -> dict[str, str]:
    """The environment a restarting instance of ``service`` adds for its promoted release ({} if none).

    The code comes first on PYTHONPATH, ahead of the checkout the venv points at.
    """
    try:
        release = json.loads((run_dir / RELEASES / f"{service}.json").read_text())
    except (OSError, ValueError):
        return {}
    env = dict(release.get("env") or {})
    if release.get("code_dir"):
        env["PYTHONPATH"] = str(Path(release["code_dir"]) / "services")
    return env
