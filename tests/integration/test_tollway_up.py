"""`tollway up` as a person runs it: it starts everything, prints what to use, restarts what dies
(and `tollway status` shows it), and Ctrl-C stops everything it started; a taken port is named;
a run killed without stopping its children is cleaned up by the next start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_RUN_DIR
from tests.integration.conftest import LAYOUT
from tests.support.polling import eventually_sync
from tollway.launcher import runfile
from tollway.launcher.processes import free_ports

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
# Every port `tollway up` opens (deploy/mesh.yaml's services and their metrics ports): one left at its
# default collides with any other stack on this machine that uses the defaults.
NAMES = ["edge", "admin", "mesh", "redis", "gateway", "router", "cache", "embedding", "openai_compat", "budget"]
NAMES += ["prompts", "retrieval", "jobs", "local_model", "prometheus"]
# The process that runs the cache, killed below: its own, or mesh.yaml's `core` group when co-located.
CACHE_PROCESS = "core" if LAYOUT == "colocated" else "cache"


@pytest.fixture
def up_dir() -> Path:
    # Under scripts/test.sh's run dir, so that its clean-up finds the pid file even if a test dies.
    return Path(tempfile.mkdtemp(prefix="up-", dir=TEST_RUN_DIR or None))


def up(tmp_path: Path, ports: dict[str, int], catalog: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "tollway.cli",
        "up",
        "--no-model",
        "--catalog",
        str(catalog),
        "--run-dir",
        str(tmp_path),
        "--layout",
        LAYOUT,
        *extra,
    ]
    for name, port in ports.items():
        argv += ["--port", f"{name}={port}"]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    # A zombie (dead, not reaped yet: an orphan in a container whose init does not reap) is not alive.
    return runfile.start_ticks(pid) is not None


def pids(run_dir: Path) -> dict[int, str]:
    """The pid file: PID -> name (lines are `PID START_TICKS NAME`)."""
    lines = [line.split() for line in (run_dir / "pids").read_text().splitlines()]
    return {int(parts[0]): parts[2] if len(parts) > 2 else "" for parts in lines}


def wait_up(proc: subprocess.Popen[str]) -> list[str]:
    """Reads `tollway up`'s output until it says it is up (or exits); returns the lines."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("A process that exits is restarted") or proc.poll() is not None:
            break
    out = "".join(lines)
    assert "Tollway is up" in out, out + (proc.stderr.read() if proc.stderr else "")
    return lines


def up_on_free_ports(
    run_dir: Path, catalog: Path, *args: str
) -> tuple[subprocess.Popen[str], dict[str, int], list[str]]:
    """Starts `tollway up` on free ports and waits until it is up; returns it, its ports and its output.

    A port found free can be taken before `tollway up` binds it (the suite's other passes start stacks
    beside this one): the launcher then refuses at once, naming it, and this tries new ports (3 tries).
    """
    for attempt in range(3):
        ports = dict(zip(NAMES, free_ports(len(NAMES)), strict=True))
        proc = up(run_dir, ports, catalog, *args)
        try:
            return proc, ports, wait_up(proc)
        except AssertionError as exc:
            proc.wait(timeout=30)
            if "already in use: port" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def status(run_dir: Path) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "status", "--run-dir", str(run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    return r.returncode, r.stdout + r.stderr


def row(table: str, name: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [name])


def test_up_serves_is_cleaned_up_after_a_kill_restarts_what_dies_and_ctrl_c_stops_everything(
    up_dir: Path, catalog: Path
) -> None:
    """One scenario, so that it starts `tollway up` twice rather than three times (each start is the
    whole mesh): the first run serves and is SIGKILLed; the second cleans up what the first left
    running, restarts a child killed under it, and Ctrl-C stops everything, the restarted child too."""
    # The second run is the full default one (Prometheus too), which Ctrl-C must stop entirely.
    first, ports, lines = up_on_free_ports(up_dir, catalog, "--no-prometheus")
    out = "".join(lines)
    key = next(line.split()[-1] for line in lines if line.strip().startswith("API key"))
    url = f"http://127.0.0.1:{ports['edge']}"
    assert url in out and "curl" in out
    r = httpx.post(
        url + "/v1/complete",
        json={"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200 and r.json()["text"] == "Hello from fake-ok."
    assert len(pids(up_dir)) >= 7
    code, table = status(up_dir)
    assert code == 0 and f"tollway up (pid {first.pid}) running" in table, table

    # SIGKILL: the launcher cannot stop its children, which keep the ports.
    first.kill()
    first.wait()
    # Envoy goes with its parent (it gets SIGTERM when the launcher dies); the others stay.
    leftovers = {pid: name for pid, name in pids(up_dir).items() if alive(pid) and name != "envoy"}
    expected = {"redis", "core"} if LAYOUT == "colocated" else {"redis", "gateway", "router"}
    assert expected <= set(leftovers.values())
    code, table = status(up_dir)
    assert code == 3 and "is gone without stopping its children" in table, table

    second = up(up_dir, ports, catalog)
    try:
        out = "".join(wait_up(second))
        for pid, name in leftovers.items():
            assert not alive(pid)
            assert f"stopped {name} (pid {pid}), left running by a previous run" in out, out
        # The pid file was emptied at the start: it lists this run's processes only.
        assert not set(pids(up_dir)) & set(leftovers)

        code, table = status(up_dir)
        assert code == 0 and f"tollway up (pid {second.pid}) running" in table, table
        cache_pid = int(row(table, CACHE_PROCESS)[2])
        os.kill(cache_pid, signal.SIGKILL)

        def restarted() -> bool:
            # Polls the status file `tollway status` prints: a CLI run per poll costs a second of imports.
            children = (runfile.read_status(up_dir) or {}).get("children", [])
            child = next(c for c in children if c["name"] == CACHE_PROCESS)
            return child["state"] == "running" and int(child["pid"]) != cache_pid

        eventually_sync(restarted, timeout_s=60, interval_s=0.2, what="the cache restarted")
        cache = row(status(up_dir)[1], CACHE_PROCESS)
        assert cache[:2] == [CACHE_PROCESS, "running"] and int(cache[2]) != cache_pid, cache
        assert cache[4] == "1" and " ".join(cache[5:]) == "killed by SIGKILL (signal 9)", cache
        children = pids(up_dir)
    finally:
        second.send_signal(signal.SIGINT)
        assert second.wait(60) == 0
    assert second.stdout is not None
    rest = second.stdout.read()
    assert f"{CACHE_PROCESS} (pid" in rest and "killed by SIGKILL (signal 9)" in rest and "restart 1 in" in rest, rest
    assert f"{CACHE_PROCESS} (pid" in rest and "serving on" in rest and "again" in rest, rest
    assert not [pid for pid in children if alive(pid)]
    assert status(up_dir)[0] == 3
    for port in ports.values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"


def test_a_taken_port_is_named(tmp_path: Path, catalog: Path) -> None:
    ports = dict(zip(NAMES, free_ports(len(NAMES)), strict=True))
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["edge"]))
        blocker.listen()
        proc = up(tmp_path, ports, catalog)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"port {ports['edge']} (envoy (edge)" in err
    assert not (tmp_path / "pids").exists()
