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
