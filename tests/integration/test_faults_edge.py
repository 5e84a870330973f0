"""Stalls and honest compatibility as a client sees them, through Envoy and the OpenAI surface.

A stopped (SIGSTOP) provider or Redis keeps its connections open and answers nothing; each
test continues it in a ``finally``. Outcomes are asserted (status, message, headers), never
how long anything took: those figures are in ``bench/faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.polling import eventually_sync
from tollway.cli import _create_key
from tollway.launcher.stack import Stack

pytestmark = pytest.mark.timeout(90)

ALLOW = {"x-tollway-allow-fallback": "true"}


def chat(model: str = "fake-ok", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"hi {uuid.uuid4()}"}], **extra}


@pytest.fixture
def client(stack: Stack, api_key: str) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {api_key}", "x-tollway-cache-mode": "bypass"}
    with httpx.Client(base_url=stack.edge_url, headers=headers, timeout=60) as c:
        yield c


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process is stopped (SIGSTOP) inside the block and always continued after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --- honest compatibility -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param", "stream", "names"),
    [
        # fake-ok's catalog entry has no "tools" capability: refused before anything is sent.
        (
            {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]},
            "tools",
            stream,
            "fake-ok",
        )
        for stream in (False, True)
    ]
    + [
        # response_format is honoured for any model since issue 18: where the provider cannot enforce it the
        # gateway asks in a system turn, validates and retries (tests/integration/test_gateway_guards.py).
        ({"logprobs": True, "top_logprobs": 2}, "logprobs", False, "fake-ok"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs", True, "fake-ok"),
        # n > 1 is served by fan-out without streaming (below); a stream of n answers is refused.
        ({"n": 2}, "n", True, "stream"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    client: httpx.Client, extra: dict[str, Any], param: str, stream: bool, names: str
) -> None:
    r = client.post("/v1/chat/completions", json=chat("fake-ok", stream=stream, **extra))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "capability_unsupported"
    assert error["param"] == param and names in error["message"], error


def test_n_answers_without_streaming_are_n_choices(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=chat("fake-ok", n=2))
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]


def test_the_answering_model_and_any_fallback_are_in_the_headers(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=chat("fake-ok"))
    assert r.status_code == 200
    assert (r.headers["x-tollway-model"], r.headers["x-tollway-fallback"]) == ("fake-ok", "none")

    # The default keeps a request on the model it named: its provider is down, so 503.
    r = client.post("/v1/chat/completions", json=chat("falls-back"))
    assert r.status_code == 503 and "deadai" in r.json()["error"]["message"]

    for stream in (False, True):
        r = client.post("/v1/chat/completions", json=chat("falls-back", stream=stream), headers=ALLOW)
        assert r.status_code == 200, r.text
        assert r.headers["x-tollway-model"] == "fake-ok"
        # CONNECTION, or BREAKER_OPEN once the dead provider's breaker has opened.
        assert r.headers["x-tollway-fallback"].startswith("falls-back (")


def test_a_bad_allow_fallback_header_is_a_400(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=chat(), headers={"x-tollway-allow-fallback": "maybe"})
    assert r.status_code == 400 and "x-tollway-allow-fallback" in r.json()["error"]["message"]


# --- stalls -------------------------------------------------------------------------------


def test_a_stopped_provider_is_a_503_naming_it_and_its_timeout(
    client: httpx.Client, killable_openai: tuple[subprocess.Popen[bytes], str]
) -> None:
    proc, _ = killable_openai
    if proc.poll() is not None:
        pytest.skip("the killable provider was already killed by another test")
    with stopped(proc.pid):
        for stream in (False, True):
            r = client.post("/v1/chat/completions", json=chat("fake-killable", stream=stream))
            assert r.status_code == 503, r.text
            message = r.json()["error"]["message"]
            # A whole answer is asked for whole: its limit is the wait for the response's head.
            setting = "first_token_timeout_s" if stream else "timeout_s 2s): no response head"
            assert "killable/fake-killable/default" in message and setting in message, message
    # Continued, it answers again.
    r = client.post("/v1/chat/completions", json=chat("fake-killable"))
    assert r.status_code == 200


def _redis_pid(stack: Stack) -> int:
    return next(c.process.pid for c in stack.children if c.name == "redis")


def test_a_stopped_redis_is_a_503_naming_redis_then_recovers(stack: Stack) -> None:
    # A key the gateway has never seen, so it must ask Redis.
    key, _ = asyncio.run(_create_key(stack.redis_url, "stall-test"))
    headers = {"authorization": f"Bearer {key}", "x-tollway-cache-mode": "bypass"}
    with httpx.Client(base_url=stack.edge_url, headers=headers, timeout=60) as c:
        with stopped(_redis_pid(stack)):
            r = c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 503, r.text
            assert "Redis" in r.json()["error"]["message"]
            g = c.post("/v1/complete", json=chat())
            assert g.status_code == 503 and "Redis" in g.json()["message"]

        def answers() -> bool:
            return c.post("/v1/chat/completions", json=chat()).status_code == 200

        eventually_sync(answers, timeout_s=30, interval_s=0.2, what="an answer after Redis continued")


def test_a_tier_the_catalog_does_not_route_is_a_400_naming_it(client: httpx.Client) -> None:
    # The test catalog routes no tiers (make run's does): the gateway says so before spending anything.
    r = client.post("/v1/chat/completions", json={**chat("auto"), "tier": "small"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "tier" and "routes no model for tier 'small'" in error["message"]
    r = client.post("/v1/chat/completions", json={**chat("fake-ok"), "tier": "small"})
    assert r.status_code == 400 and "both given" in r.json()["error"]["message"]
