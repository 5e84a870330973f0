"""What the README tells a newcomer to run: its gRPC example, and revoking a key by the id
`tollway keys list` shows."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tollway.cli import _create_key, main
from tollway.launcher.stack import Stack

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def readme_block(marker: str) -> str:
    """The README's python code block that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_the_grpc_example_runs_as_written(stack: Stack, api_key: str) -> None:
    code = readme_block("grpc.aio.insecure_channel")
    # The one change: the test catalog's fake model, since the local model is not started here.
    assert 'model="smollm2"' in code
    code = code.replace('model="smollm2"', 'model="fake-ok"')
    env = {**os.environ, "KEY": api_key, "TOLLWAY_EDGE": stack.edge_url.removeprefix("http://")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    # The events as protobuf text; a cached answer may come back in other pieces.
    deltas = re.findall(r'^delta \{\n  text: "(.*)"\n\}$', done.stdout, re.M)
    assert "".join(deltas) == "Hello from fake-ok.", done.stdout
    assert done.stdout.startswith("started {") and "\ncompleted {" in done.stdout


def test_keys_revoke_takes_the_id_keys_list_prints(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = asyncio.run(_create_key(stack.redis_url, "revoke-by-id"))
    assert main(["--redis-url", stack.redis_url, "keys", "list"]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if "tenant=revoke-by-id" in row]
    printed_id = line.split()[0]  # "tw-AbC123…"
    assert key.startswith(printed_id.rstrip("…"))

    assert main(["--redis-url", stack.redis_url, "keys", "revoke", printed_id]) == 0
    assert "revoked " + printed_id in capsys.readouterr().out
    r = httpx.get(stack.edge_url + "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 401

    assert main(["--redis-url", stack.redis_url, "keys", "revoke", printed_id]) == 1
    assert "no key matches" in capsys.readouterr().err
    assert main(["--redis-url", stack.redis_url, "keys", "revoke", "tw-"]) == 2
    assert "not a key id" in capsys.readouterr().err
