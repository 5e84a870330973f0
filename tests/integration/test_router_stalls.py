"""Stalled providers and the fallback policy, against the wire-exact fakes and a real stopped process.

A stalled provider keeps its connection open and sends nothing: the fakes' ``fake-stall-*``
scenarios do exactly that, and one test stops a real fake process with SIGSTOP. Before the
first token the router leaves the deployment (and never asks it again within the request);
after it, the stream ends with an in-band error. Outcomes are asserted, never durations.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic as fake_anthropic
from tests.fakes import openai as fake_openai
from tests.fakes.http import FakeHTTPServer
from tests.fakes.procs import FakeProvider
from tollway.common.catalog import parse_catalog
from tollway.common.chat import ChatMessage, ChatRequest, TextDelta, Tool
from tollway.common.route import RouteCompleted, RouteEvent, RouteStarted, StreamFailed
from tollway.mesh import errors
from tollway.router import metrics
from tollway.router.engine import Router
from tollway.router.providers.anthropic import AnthropicAdapter
from tollway.router.providers.openai_compat import OpenAICompatAdapter

pytestmark = pytest.mark.timeout(60)

# Short limits keep the suite quick; nothing below depends on how long they really take.
FAST = {"timeout_s": 5, "connect_timeout_s": 1, "first_token_timeout_s": 0.5, "stall_timeout_s": 0.5}


@pytest.fixture
async def oa() -> AsyncIterator[FakeHTTPServer]:
    server = fake_openai.make_server()
    await server.start()
    yield server
    await server.kill()


@pytest.fixture
async def an() -> AsyncIterator[FakeHTTPServer]:
    server = fake_anthropic.make_server()
    await server.start()
    yield server
    await server.kill()


@pytest.fixture
def stoppable() -> Iterator[FakeProvider]:
    """A fake OpenAI server in its own process, for SIGSTOP; always continued and stopped."""
    fake = FakeProvider("openai", Path(tempfile.mkdtemp(prefix="stall-")))
    yield fake
    assert fake.proc is not None
    if fake.proc.process.poll() is None:
        os.kill(fake.proc.pid, signal.SIGCONT)
    fake.stop()


_ROUTERS: list[Router] = []


@pytest.fixture(autouse=True)
async def _close_routers() -> AsyncIterator[None]:
    yield
    while _ROUTERS:
        for adapter in _ROUTERS.pop().adapters.values():
            await adapter.aclose()


def router(providers: dict[str, Any], models: dict[str, Any], **routing: Any) -> Router:
    catalog = parse_catalog({"providers": providers, "models": models, "routing": routing}, env={})
    r = Router(catalog, {"openai_compat": OpenAICompatAdapter(), "anthropic": AnthropicAdapter()})
    _ROUTERS.append(r)
    return r


def oa_provider(server: FakeHTTPServer | FakeProvider, **extra: Any) -> dict[str, Any]:
    return {"wire": "openai_compat", "base_url": f"http://127.0.0.1:{server.port}/v1", **FAST, **extra}


def chat(model: str, **kw: Any) -> ChatRequest:
    return ChatRequest(model, (ChatMessage("user", "Say hello"),), request_id=f"r-{time.monotonic_ns()}", **kw)


async def run(r: Router, request: ChatRequest) -> list[RouteEvent]:
    return [e async for e in r.generate(request)]


def calls_for(server: FakeHTTPServer, upstream: str) -> int:
    return sum(1 for req in server.log if req.body and req.json().get("model") == upstream)


def timeouts(deployment: str, which: str) -> float:
    return metrics.PROVIDER_TIMEOUTS.labels(deployment.split("/", 1)[0], deployment, which)._value.get()


async def test_a_stall_before_the_first_token_moves_to_the_next_deployment_once(
    oa: FakeHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    r = router(
        {"oa": oa_provider(oa)},
        {
            "m": {
                "provider": "oa",
                "deployments": [
                    # The stalled one gets nearly all the traffic, so it is tried first.
                    {"name": "stalled", "upstream_model": "fake-stall-before-first", "weight": 1000},
                    {"name": "live", "upstream_model": "fake-ok", "weight": 0.001},
                ],
            }
        },
    )
    before = timeouts("oa/m/stalled", "first_token_timeout_s")
    with caplog.at_level(logging.WARNING, logger="tollway.router.engine"):
        events = await run(r, chat("m"))
    started = events[0]
    assert isinstance(started, RouteStarted) and started.deployment == "oa/m/live"
    assert started.fallback_path == () and isinstance(events[-1], RouteCompleted)
    # Not asked again within the request: a retry would wait out the same stall.
    assert calls_for(oa, "fake-stall-before-first") == 1
    assert timeouts("oa/m/stalled", "first_token_timeout_s") == before + 1
    warning = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert warning and "oa/m/stalled" in warning[0].getMessage()
    assert "first_token_timeout_s" in warning[0].getMessage()


@pytest.mark.parametrize("wire", ["openai_compat", "anthropic"])
async def test_a_stall_mid_stream_ends_in_band_with_the_partial_usage(
    wire: str, oa: FakeHTTPServer, an: FakeHTTPServer
) -> None:
    server = oa if wire == "openai_compat" else an
    base = f"http://127.0.0.1:{server.port}" + ("/v1" if wire == "openai_compat" else "")
    r = router(
        {"p": {"wire": wire, "base_url": base, **FAST}},
        {
            "m": {"provider": "p", "upstream_model": "fake-stall-mid-stream", "fallbacks": ["other"]},
            "other": {"provider": "p", "upstream_model": "fake-ok"},
        },
        model_fallback=True,
    )
    before = timeouts("p/m/default", "stall_timeout_s")
    events = await run(r, chat("m"))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    failed = events[-1]
    assert text == "Hello from fake-stall-mid-stream"  # 3 pieces, then silence; no other model spliced in
    assert isinstance(failed, StreamFailed) and failed.reason == "PROVIDER_STALLED" and failed.code == 14
    assert "stall_timeout_s" in failed.message and failed.partial_usage.output_tokens > 0
    assert timeouts("p/m/default", "stall_timeout_s") == before + 1


async def test_a_stalled_model_without_fallback_is_unavailable_naming_the_timeout(oa: FakeHTTPServer) -> None:
    r = router(
        {"oa": oa_provider(oa)},
        {
            "m": {"provider": "oa", "upstream_model": "fake-stall-before-first", "fallbacks": ["other"]},
            "other": {"provider": "oa", "upstream_model": "fake-ok"},
        },
    )
    with pytest.raises(errors.Unavailable) as info:
        await run(r, chat("m"))
    assert info.value.reason == "PROVIDER_UNAVAILABLE"
    assert "oa/m/default" in info.value.message and "first_token_timeout_s" in info.value.message
    assert calls_for(oa, "fake-ok") == 0  # the default policy keeps the request on its model


async def test_a_model_without_keys_is_unavailable_naming_the_variable_unless_fallback_is_allowed(
    oa: FakeHTTPServer,
) -> None:
    providers = {"hosted": oa_provider(oa, api_key_env="TOLLWAY_TEST_NO_SUCH_KEY"), "local": oa_provider(oa)}
    models = {"big": {"provider": "hosted", "upstream_model": "fake-ok"}, "small": {"provider": "local"}}
    r = router(providers, models, last_resort="small")
    with pytest.raises(errors.Unavailable) as info:
        await run(r, chat("big"))
    assert info.value.reason == "PROVIDER_KEY_MISSING"
    assert "TOLLWAY_TEST_NO_SUCH_KEY" in info.value.message and "x-tollway-allow-fallback" in info.value.message
    assert info.value.metadata["missing_env"] == "TOLLWAY_TEST_NO_SUCH_KEY"
    assert calls_for(oa, "fake-ok") == 0

    events = await run(r, chat("big", allow_model_fallback=True))
    started = events[0]
    assert isinstance(started, RouteStarted) and started.model == "small"
    assert started.fallback_path == ("big (NO_API_KEY)",)


async def test_the_catalog_may_allow_other_models_and_a_request_may_refuse_them(oa: FakeHTTPServer) -> None:
    r = router(
        {"oa": oa_provider(oa)},
        {
            "m": {"provider": "oa", "upstream_model": "fake-500", "fallbacks": ["other"]},
            "other": {"provider": "oa", "upstream_model": "fake-ok"},
        },
        model_fallback=True,
    )
    events = await run(r, chat("m"))
    assert isinstance(events[0], RouteStarted) and events[0].model == "other"
    with pytest.raises(errors.Unavailable):
        await run(r, chat("m", allow_model_fallback=False))


async def test_only_deployments_with_the_capability_are_tried(oa: FakeHTTPServer) -> None:
    r = router(
        {"oa": oa_provider(oa)},
        {
            "m": {
                "provider": "oa",
                "capabilities": ["tools"],
                "deployments": [
                    {"name": "plain", "upstream_model": "fake-ok", "capabilities": [], "weight": 1000},
                    {"name": "tooled", "upstream_model": "fake-tools", "weight": 0.001},
                ],
            }
        },
    )
    events = await run(r, chat("m", tools=(Tool("get_weather"), Tool("get_time"))))
    assert isinstance(events[0], RouteStarted) and events[0].deployment == "oa/m/tooled"
    assert isinstance(events[-1], RouteCompleted) and len(events[-1].tool_calls) == 2
    assert calls_for(oa, "fake-ok") == 0
    # Without tools, both deployments may serve.
    events = await run(r, chat("m"))
    assert isinstance(events[-1], RouteCompleted)


async def test_a_really_stopped_provider_process_is_left_before_and_cut_after_the_first_token(
    stoppable: FakeProvider, oa: FakeHTTPServer
) -> None:
    assert stoppable.proc is not None
    pid = stoppable.proc.pid
    r = router(
        {"stoppable": oa_provider(stoppable), "live": oa_provider(oa)},
        {
            "stopped": {"provider": "stoppable", "upstream_model": "fake-gap-50", "fallbacks": ["up"]},
            "up": {"provider": "live", "upstream_model": "fake-ok"},
        },
    )
    # Mid-stream: the process stops after a few ticks; the kernel keeps its connection open.
    seen: list[RouteEvent] = []
    async for event in r.generate(chat("stopped")):
        seen.append(event)
        if sum(isinstance(e, TextDelta) for e in seen) == 3:
            os.kill(pid, signal.SIGSTOP)
    failed = seen[-1]
    assert isinstance(seen[0], RouteStarted) and seen[0].model == "stopped"
    assert isinstance(failed, StreamFailed) and failed.reason == "PROVIDER_STALLED"
    assert "stall_timeout_s" in failed.message and "stoppable/stopped/default" in failed.message

    # Before the first token, still stopped: another model answers when the request allows it.
    events = await run(r, chat("stopped", allow_model_fallback=True))
    assert isinstance(events[0], RouteStarted) and events[0].model == "up"
    assert events[0].fallback_path == ("stopped (TIMEOUT)",)

    # Continued, it answers again (the first tick is enough: the answer is 1000 ticks long).
    os.kill(pid, signal.SIGCONT)
    events = []
    async for event in r.generate(chat("stopped")):
        events.append(event)
        if isinstance(event, TextDelta):
            break
    assert isinstance(events[0], RouteStarted) and events[0].model == "stopped"
