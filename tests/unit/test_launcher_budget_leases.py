"""The launcher lets a budget admit from leases only when every caller reaches that one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tollway.budget.config import LEASE_REQUESTS_ONE_PROCESS
from tollway.launcher.stack import Stack, StackOptions

SETTING = "TOLLWAY_BUDGET_LEASE_REQUESTS"


def budget_env(tmp_path: Path, **options: Any) -> dict[str, str]:
    stack = Stack(StackOptions(run_dir=tmp_path, layout="split", with_model=False, **options))
    budget = stack.mesh.service("budget")
    return stack._service_env(budget, budget.endpoints[0].port)


def test_a_budget_that_runs_alone_admits_from_leases(tmp_path: Path) -> None:
    assert budget_env(tmp_path)[SETTING] == str(LEASE_REQUESTS_ONE_PROCESS)


def test_a_budget_with_replicas_or_a_possible_canary_does_not(tmp_path: Path) -> None:
    # Settlements may reach another process than the one that admitted the hold.
    assert SETTING not in budget_env(tmp_path, replicas={"budget": 2})
    assert SETTING not in budget_env(tmp_path, canary_ready=("budget",))


def test_the_operators_own_setting_wins(tmp_path: Path) -> None:
    assert budget_env(tmp_path, env={SETTING: "0"})[SETTING] == "0"
