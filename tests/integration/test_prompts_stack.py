"""The prompts service as the launcher starts it in the integration stack (seeded from
deploy/prompts), used through the gateway's prompts client and the `tollway prompts` CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from tollway.common.chat import ChatMessage, ChatRequest
from tollway.gateway.prompts_client import SERVICE_NAME, PromptRef, PromptsClient
from tollway.launcher.stack import Stack
from tollway.mesh import clients
from tollway.mesh.errors import InvalidArgument, NotFound, Unavailable
from tollway.prompts.v1 import prompts_pb2, prompts_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


async def test_the_seeded_example_resolves_through_the_gateway_client(stack: Stack) -> None:
    async with clients.channel(stack.address("prompts"), idempotent_services=[SERVICE_NAME]) as channel:
        client = PromptsClient(channel)
        ref = PromptRef("support-triage", variables={"ticket": "Checkout is down", "product": "api"})
        got = await client.resolve(ref, tenant="acme", user="u1")
        assert got.version >= 1 and got.resolution == "label" and got.label == "production"
        assert got.version_ref == f"support-triage@{got.version}"
        assert got.cacheable_prefix_count == 3
        assert [m.cache_breakpoint for m in got.messages] == [False, False, True, False]
        assert "Checkout is down" in got.messages[-1].content and "Product area: api" in got.messages[-1].content
        assert got.tier == "small" and got.temperature == 0 and got.max_tokens == 120
        assert got.response_format is not None and got.response_format.type == "json_object"
        assert got.headers()["x-tollway-prompt-version"] == str(got.version)

        request = ChatRequest(model="", messages=(ChatMessage("user", "and one more thing"),), max_tokens=50)
        applied = got.apply(request)
        assert applied.messages[:4] == got.messages and applied.messages[-1].content == "and one more thing"
        assert (applied.model, applied.max_tokens, applied.temperature) == ("auto", 50, 0)  # the request's max wins

        pinned = await client.resolve(
            PromptRef("support-triage", version=got.version, variables={"ticket": "x"}), tenant="a"
        )
        assert pinned.resolution == "version"

        with pytest.raises(InvalidArgument) as bad:
            await client.resolve(PromptRef("support-triage", variables={"product": "nope"}), tenant="acme")
        assert bad.value.reason == "VARIABLES_MISSING"
        assert {f for f, _ in bad.value.violations} == {"prompt_ref.variables.ticket", "prompt_ref.variables.product"}
        with pytest.raises(NotFound):
            await client.resolve(PromptRef("support-triage", label="nope", variables={"ticket": "x"}), tenant="acme")
        with pytest.raises(InvalidArgument):
            await client.resolve(PromptRef("support-triage", label="staging", version=1), tenant="acme")


async def test_an_unreachable_prompts_service_is_unavailable_naming_it() -> None:
    async with clients.channel("127.0.0.1:1") as channel:
        with pytest.raises(Unavailable) as info:
            await PromptsClient(channel, timeout_s=1.0).resolve(PromptRef("x"), tenant="acme")
    assert info.value.reason == "PROMPTS_UNAVAILABLE"


def tollway(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway.cli", "prompts", *args, "--target", stack.address("prompts"), "--actor", "ci"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


PROMPT = """id: {tid}
description: A CLI test prompt.
labels: [production]
variables:
  type: object
  required: [name]
  properties: {{name: {{type: string}}}}
messages:
  - {{role: system, content: "Be brief."}}
  - {{role: user, content: "{greeting} {{{{ name }}}}"}}
example: {{name: Ada}}
"""


async def test_push_promote_rollback_show_history(stack: Stack, tmp_path: Path) -> None:
    tid = f"cli-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "p.yaml"
    path.write_text(PROMPT.format(tid=tid, greeting="Hello"))

    dry = tollway(stack, "push", str(tmp_path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{tid}: new template; would publish version 1 and set production" in dry.stdout
    first = tollway(stack, "push", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert f"{tid}: published version 1, labels set: production" in first.stdout
    assert f"{tid}: unchanged (= version 1)" in tollway(stack, "push", str(tmp_path)).stdout

    path.write_text(PROMPT.format(tid=tid, greeting="Hi"))
    dry = tollway(stack, "push", str(tmp_path), "--dry-run")
    assert "-  - Hello {{ name }}" not in dry.stdout  # a real unified diff of the changed message:
    assert "-Hello {{ name }}" in dry.stdout and "+Hi {{ name }}" in dry.stdout
    assert f"{tid}: would publish version 2" in dry.stdout
    second = tollway(stack, "push", str(tmp_path))
    assert f"{tid}: published version 2 (labels not moved" in second.stdout  # pushing never promotes

    async with clients.channel(stack.address("prompts")) as channel:
        stub = prompts_pb2_grpc.PromptsServiceStub(channel)

        async def production() -> int:
            t = (await stub.GetTemplate(prompts_pb2.GetTemplateRequest(template_id=tid))).template
            return next(lb.version for lb in t.labels if lb.label == "production")

        assert await production() == 1
        promoted = tollway(stack, "promote", tid, "--version", "2", "--label", "production", "--reason", "better")
        assert f"{tid}: production moved from version 1 to 2" in promoted.stdout, promoted.stderr
        assert await production() == 2
        rolled = tollway(stack, "rollback", tid, "--label", "production")
        assert f"{tid}: production rolled back from version 2 to 1" in rolled.stdout, rolled.stderr
        assert await production() == 1

    history = tollway(stack, "history", tid).stdout.splitlines()
    assert [line.split("  ")[1] for line in history] == [
        "production: 2 -> 1",
        "production: 1 -> 2",
        "production: - -> 1",
    ]
    assert "rollback by ci" in history[0] and "(better)" in history[1]
    show = tollway(stack, "show", tid)
    assert "label production -> version 1" in show.stdout and "version 2" in show.stdout
    full = tollway(stack, "show", tid, "--version", "2")
    assert "Hi {{ name }}" in full.stdout

    missing = tollway(stack, "promote", tid, "--version", "9", "--label", "production")
    assert missing.returncode == 1 and "has no version 9; the newest is 2" in missing.stderr
    (tmp_path / "p.yaml").write_text(PROMPT.format(tid=tid, greeting="{{ name }").replace("Be brief.", "x"))
    broken = tollway(stack, "push", str(tmp_path))
    assert broken.returncode == 1 and "line 1, column" in broken.stderr


async def test_the_stack_serves_health_for_prompts(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(stack.address("prompts")) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
