"""Shared test set-up: no stray TOLLWAY_* settings leak into a test."""

from __future__ import annotations

import os

import pytest

# Read once, before any test clears the environment: where scripts/test.sh wants run dirs.
TEST_RUN_DIR = os.environ.get("TOLLWAY_TEST_RUN_DIR", "")


@pytest.fixture(autouse=True)
def _clean_tollway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TOLLWAY_"):
            monkeypatch.delenv(key)


# With two xdist workers taking one file at a time, a long file dealt out last keeps one worker busy
# while the other idles: these files (the longest, measured with --durations) go first. Order only,
# so a stale list costs balance, never correctness; single-process runs keep pytest's own order.
LONG_FILES_FIRST = (
    "tests/integration/test_canary.py",
    "tests/integration/test_tollway_up.py",
    "tests/integration/test_edge_keepalive.py",
    "tests/integration/test_jobs_faults.py",
    "tests/integration/test_embedding_parity.py",
    "tests/integration/test_observability.py",
    "tests/integration/test_prompts_stack.py",
    "tests/integration/test_openapi_generated_inputs.py",
    "tests/integration/test_jobs_stack.py",
    "tests/integration/test_gateway_restart.py",
    "tests/integration/test_supervision.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {path: i for i, path in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
