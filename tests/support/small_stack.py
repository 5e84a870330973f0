"""A small stack on free ports: the fake provider's models, one tenant on a roomy budget plan, and
the services a test names (with Envoy and Redis), for integration tests that need their own catalog."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from tollway.launcher.processes import free_ports
from tollway.launcher.stack import ROOT, Stack, StackOptions


def mesh_with_replicas(run: Path, replicas: Mapping[str, int]) -> Path:
    """A copy of deploy/mesh.yaml in ``run`` where each service named in ``replicas`` has that many
    (Envoy balances over them; co-located members that share a count run as that many processes).

    Raises:
        AssertionError: A named service's entry no longer has its ``replicas: 1`` line.
    """
    text = (ROOT / "deploy" / "mesh.yaml").read_text().replace("descriptor_set: ../", f"descriptor_set: {ROOT}/")
    for name, count in replicas.items():
        text, n = re.subn(rf"(- name: {name}\b.*\n(?:    .*\n)*?    replicas: )1", rf"\g<1>{count}", text, count=1)
        assert n == 1, f"the {name} entry of deploy/mesh.yaml has no `replicas: 1` line"
    path = run / "mesh.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def roomy_stack(
    prefix: str,
    models_yaml: str,
    fake_openai: str,
    tenant: str,
    *,
    services: tuple[str, ...],
    tokens: int,
    timeout_s: float = 10,
    replicas: Mapping[str, int] | None = None,
    layout: Literal["split", "colocated"] = "split",
) -> Iterator[Stack]:
    """Starts the stack, yields it, stops it.

    Args:
        prefix: The run directory's name prefix (under TOLLWAY_TEST_RUN_DIR when set).
        models_yaml: The ``models:`` entries, indented by two spaces; provider ``fakeai`` is the fake.
        fake_openai: The fake provider's base URL.
        tenant: The one tenant of the budget plan ``roomy``.
        services: The services to start.
        tokens: The tenant's daily token quota.
        timeout_s: The fake provider's timeout.
        replicas: Replica counts of services (see :func:`mesh_with_replicas`); deploy/mesh.yaml's otherwise.
        layout: The launcher's layout (``colocated`` runs mesh.yaml's process groups).
    """
    run = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TOLLWAY_TEST_RUN_DIR") or None))
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  fakeai: {{wire: openai_compat, base_url: '{fake_openai}/v1', timeout_s: {timeout_s:g}}}\n"
        f"models:\n{models_yaml}"
    )
    plans = run / "budget.yaml"
    plans.write_text(
        "version: 1\ndefault_plan: ''\nplans:\n  roomy:\n    default_priority: interactive\n    quotas:\n"
        f"      - {{scope: tenant, window: day, tokens: {tokens}}}\n"
        f"tenants:\n  {tenant}: {{plan: roomy}}\n"
    )
    names = ["edge", "admin", "mesh", "redis", *services]
    stack = Stack(
        StackOptions(
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            layout=layout,
            env={"TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_BUDGET_PLANS": str(plans)},
            **({"mesh_path": mesh_with_replicas(run, replicas)} if replicas else {}),
        )
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
