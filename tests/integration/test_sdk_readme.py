"""The README's example of the other API surfaces runs as written (issue 16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tollway.launcher.stack import Stack

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def test_the_surfaces_example_runs_as_written(stack: Stack, api_key: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (code,) = [b for b in blocks if "anthropic.Anthropic(" in b]
    # The one change: the test catalog's fake model, since the local model is not started here.
    assert 'model="smollm2"' in code
    code = code.replace('model="smollm2"', 'model="fake-ok"')
    env = {**os.environ, "KEY": api_key, "TOLLWAY_URL": stack.edge_url}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=45, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["Hello from fake-ok.", "Hello from fake-ok."]
    assert int(lines[2]) > 0
