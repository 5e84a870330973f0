"""One real mesh for the whole test run: Redis, the services, Envoy and a wire-exact fake
OpenAI server as the hosted provider. All on free ports, all stopped at the end, whatever
happened.

The layout follows `TOLLWAY_TEST_LAYOUT`: `colocated` (the default, as `make run`: deploy/mesh.yaml's
process groups run as one process each, with in-process calls between their services, checked for
message mutation) or `split` (one process per service). `scripts/test.sh` runs both.

The local model (llama.cpp) starts only when a test marked `model` runs: the stack reserves
its port, so the router's catalog already points at it, and the session fixture `local_model`
starts it there on first use. `pytest -m "not model"` never starts it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_RUN_DIR
from tollway.cli import _create_key
from tollway.launcher.processes import free_port, free_ports
from tollway.launcher.stack import Stack, StackOptions

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = os.environ.get("TOLLWAY_TEST_LAYOUT", "colocated")
if LAYOUT not in ("colocated", "split"):
    raise pytest.UsageError(f"TOLLWAY_TEST_LAYOUT has value {LAYOUT!r}; use colocated or split")
FAKE_MODELS = ("fake-ok", "fake-words-20", "fake-gap-50", "fake-cut-mid-stream", "fake-500", "fake-429", "fake-400")
FAKE_MODELS += ("fake-gap-40-words-40",)  # issue 17: a slow stream that ends (the console's browser tests)
FAKE_MODELS += ("fake-long", "fake-cached", "fake-slow-5000")  # issue 16: stop reasons, cache reads, cancels


@pytest.fixture(scope="session")
def run_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="stack-", dir=TEST_RUN_DIR or None))


@pytest.fixture(scope="session")
def fake_openai(run_dir: Path) -> Iterator[str]:
    """Base URL of a fake OpenAI server in its own process."""
    proc, url = _start_fake(run_dir, "fake-openai")
    yield url
    proc.kill()
    proc.wait()


def _start_fake(run_dir: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (run_dir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai", "--port", str(port)], stdout=subprocess.PIPE, stderr=log, cwd=ROOT
    )
    (run_dir / "pids").open("a").write(f"{proc.pid}\n")
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"LISTENING")
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def killable_openai(run_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A second fake provider that a test may kill (every provider of its model then fails)."""
    proc, url = _start_fake(run_dir, "fake-killable")
    yield proc, url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def namespaces(run_dir: Path) -> Path:
    path = run_dir / "namespaces.yaml"
    path.write_text(
        """defaults: {ttl_s: 3600, stale_grace_s: 3600, scope: tenant, semantic: true}
namespaces:
  default: {threshold: 0.9}
  personal: {threshold: 0.9, scope: user}
  short: {threshold: 0.9, ttl_s: 1}
  sampled: {threshold: 0.9, quality_sample_rate: 1.0}
"""
    )
    return path


@pytest.fixture(scope="session")
def budget_plans(run_dir: Path) -> Path:
    """Plans for the stack's budget service. Tenants get ``open`` (a rate limit no test reaches:
    every gateway request reserves, so the deploy file's free plan would refuse busy tests);
    tests that want a quota put their own tenant on ``free``, ``capped`` or ``dollars`` and
    override it. ``dollars`` has a dollar quota (fail closed while the budget service is down),
    ``open`` none (fail open)."""
    path = run_dir / "budget.yaml"
    path.write_text(
        """version: 1
default_plan: open
plans:
  open:
    quotas:
      - {scope: tenant, window: minute, requests: 1000000}
  free:
    max_tokens_per_request: 1024
    quotas:
      - {scope: tenant, window: minute, requests: 60}
      - {scope: tenant, window: minute, tokens: 40000}
      - {scope: tenant, window: month, usd: 5}
  capped:
    quotas:
      - {scope: tenant, window: minute, requests: 1000000}
      - {scope: tenant, window: minute, tokens: 1000000}
  dollars:
    quotas:
      - {scope: tenant, window: month, usd: 100}
"""
    )
    return path


@pytest.fixture(scope="session")
def catalog(run_dir: Path, fake_openai: str, killable_openai: tuple[subprocess.Popen[bytes], str]) -> Path:
    """The fake models, a provider nobody listens on, and the real local model."""
    dead = free_port()
    lines = [
        "providers:",
        f"  fakeai: {{wire: openai_compat, base_url: '{fake_openai}/v1', timeout_s: 10}}",
        f"  deadai: {{wire: openai_compat, base_url: 'http://127.0.0.1:{dead}/v1', timeout_s: 2}}",
        f"  killable: {{wire: openai_compat, base_url: '{killable_openai[1]}/v1', timeout_s: 2}}",
        "  local: {wire: openai_compat, base_url: '${TOLLWAY_LOCAL_MODEL_URL}', timeout_s: 120}",
        "models:",
        *[f"  {m}: {{provider: fakeai}}" for m in FAKE_MODELS],
        "  unreachable: {provider: deadai}",
        "  falls-back: {provider: deadai, upstream_model: x, fallbacks: [fake-ok]}",
        "  fake-killable: {provider: killable}",
        # Priced (the fakes are free): usage and cost attribution must agree with the budget ledger.
        "  fake-priced: {provider: fakeai, upstream_model: fake-words-20, price_per_1m_tokens: {input: 2, output: 8}}",
        "  smollm2: {provider: local, upstream_model: smollm2, capabilities: [json]}",
        "  fake-tools: {provider: fakeai, capabilities: [tools, json]}",
        "  fake-json: {provider: fakeai, capabilities: [tools, json]}",
        "  fake-bad-json: {provider: fakeai}",
    ]
    path = run_dir / "models.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def stack(run_dir: Path, catalog: Path, namespaces: Path, budget_plans: Path) -> Iterator[Stack]:
    names = [
        "edge",
        "admin",
        "mesh",
        "redis",
        "local_model",
        "gateway",
        "router",
        "cache",
        "embedding",
        "openai_compat",
        "budget",
        "prompts",
        "retrieval",
        "jobs",
    ]
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=run_dir,
        catalog=catalog,
        with_model=False,  # started on demand by `local_model`
        # jobs: openai_compat's /v1/files and /v1/batches run on it (issue 19).
        services=("gateway", "router", "openai_compat", "cache", "embedding", "budget", "prompts", "retrieval", "jobs"),
        env={
            "TOLLWAY_CACHE_NAMESPACES_PATH": str(namespaces),
            "TOLLWAY_BUDGET_PLANS": str(budget_plans),
            # Co-located calls share messages: every call checks that neither side mutates them.
            "TOLLWAY_INPROCESS_CHECKS": "1",
            # The test catalog has no last-resort model: embeddings are budgeted as smollm2 (issue 16).
            "TOLLWAY_GATEWAY_EMBEDDING_BUDGET_MODEL": "smollm2",
        },
        startup_timeout_s=60,
        layout=LAYOUT,  # type: ignore[arg-type]  # checked above
    )
    with Stack(options) as running:
        yield running


@pytest.fixture(scope="session")
def local_model(stack: Stack) -> str:
    """The local model's OpenAI base URL, started (once per run) on the port the stack reserved."""
    return stack.start_model()


@pytest.fixture(autouse=True)
def _local_model_for_model_tests(request: pytest.FixtureRequest) -> None:
    """Tests marked `model` get the local model running; no other test starts it."""
    if request.node.get_closest_marker("model") is not None:
        request.getfixturevalue("local_model")


@pytest.fixture(scope="session")
def api_key(stack: Stack) -> str:
    key, _ = asyncio.run(_create_key(stack.redis_url, "acme"))
    return key
