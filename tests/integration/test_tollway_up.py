"""`tollway up` as a person runs it: it starts everything, prints what to use, and Ctrl-C
stops everything it started; a taken port is named."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tollway.launcher.processes import free_ports

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
NAMES = ["edge", "admin", "mesh", "redis", "gateway", "router", "cache", "embedding", "openai_compat"]


def up(tmp_path: Path, ports: dict[str, int], catalog: Path) -> subprocess.Popen[str]:
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
    ]
    for name, port in ports.items():
        argv += ["--port", f"{name}={port}"]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_serves_then_ctrl_c_stops_everything(tmp_path: Path, catalog: Path) -> None:
    ports = dict(zip(NAMES, free_ports(len(NAMES)), strict=True))
    proc = up(tmp_path, ports, catalog)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("Ctrl-C stops everything") or proc.poll() is not None:
            break
    out = "".join(lines)
    assert "Tollway is up" in out, out + proc.stderr.read() if proc.stderr else out
    key = next(line.split()[-1] for line in lines if line.strip().startswith("API key"))
    url = f"http://127.0.0.1:{ports['edge']}"
    assert url in out and "curl" in out
    r = httpx.post(
        url + "/v1/complete",
        json={"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200 and r.json()["text"] == "Hello from fake-ok."
    children = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(children) >= 6
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert not [pid for pid in children if alive(pid)]
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
