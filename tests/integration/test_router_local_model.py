"""The self-hosted tier for real: llama.cpp serving SmolLM2 through the openai_compat adapter.

llama.cpp's server ignores ``stream_options.include_usage``: a streamed answer ends with no
usage, and the router counts the tokens itself.
"""

from __future__ import annotations

import pytest

from tests.fakes.procs import free_port
from tollway.common.catalog import Deployment, parse_catalog
from tollway.common.chat import ChatMessage, ChatRequest, TextDelta
from tollway.common.route import RouteCompleted, RouteStarted
from tollway.router.engine import Router
from tollway.router.providers.openai_compat import OpenAICompatAdapter
from tollway.router.types import StreamEnd

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def llama(local_model: str) -> str:
    """Base URL of the stack's llama.cpp server (one per test run, started for `model` tests)."""
    return local_model


def chat(**kw: object) -> ChatRequest:
    messages = (
        ChatMessage("system", "Answer in one short sentence."),
        ChatMessage("user", "What is the capital of France?"),
    )
    return ChatRequest("smollm2", messages, max_tokens=16, temperature=0.0, **kw)  # type: ignore[arg-type]


async def test_streams_without_usage(llama: str) -> None:
    adapter = OpenAICompatAdapter("local")
    events = [e async for e in adapter.stream(chat(), Deployment("local", llama, "smollm2", timeout_s=60))]
    await adapter.aclose()
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.usage is None and end.finish_reason in ("stop", "length")


async def test_complete_reports_usage(llama: str) -> None:
    adapter = OpenAICompatAdapter("local")
    done = await adapter.complete(chat(), Deployment("local", llama, "smollm2", timeout_s=60))
    await adapter.aclose()
    assert done.text.strip() and done.usage is not None and done.usage.output_tokens > 0


async def test_a_dead_hosted_provider_falls_back_to_the_real_self_hosted_model(llama: str) -> None:
    catalog = parse_catalog(
        {
            "providers": {
                "hosted": {"base_url": f"http://127.0.0.1:{free_port()}/v1"},
                "local": {"base_url": llama, "timeout_s": 60},
            },
            "models": {"hosted-model": {"provider": "hosted"}, "smollm2": {"provider": "local"}},
            "routing": {"last_resort": "smollm2", "model_fallback": True},
        },
        env={},
    )
    adapter = OpenAICompatAdapter()
    router = Router(catalog, {"openai_compat": adapter})
    request = ChatRequest("hosted-model", chat().messages, max_tokens=16, temperature=0.0)
    events = [e async for e in router.generate(request)]
    await adapter.aclose()
    started, done = events[0], events[-1]
    assert isinstance(started, RouteStarted) and started.model == "smollm2"
    assert started.fallback_path == ("hosted-model (CONNECTION)",)
    # No usage from llama.cpp when streaming: counted here, and said so.
    assert isinstance(done, RouteCompleted) and not done.usage_reported
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
