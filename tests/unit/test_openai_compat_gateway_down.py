"""openai_compat with no gateway to talk to: a 503 in OpenAI's error shape that names the gateway.

Why: while the gateway is down or restarting, the gRPC channel fails with its own text ("failed
to connect to all addresses ..."), which tells a client nothing it can act on. The other surfaces
name the gateway (Envoy's local reply on the JSON and gRPC paths), so this one must too.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from tollway.openai_compat.service import OpenAICompatApp


def _closed_port() -> int:
    """A port nothing listens on (bound, then released): a gateway that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = OpenAICompatApp(f"127.0.0.1:{_closed_port()}", 1 << 20)
    with TestClient(app.app) as c:  # runs the lifespan, which opens the channel
        yield c


CHAT = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}


def _assert_names_the_gateway(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["message"].startswith("the gateway is unavailable"), error
    assert (error["type"], error["code"]) == ("service_unavailable", "gateway_unavailable")
    assert r.headers["retry-after"] == "1"


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completions_with_the_gateway_down_is_a_503_naming_it(client: TestClient, stream: bool) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers={"authorization": "Bearer x"})
    _assert_names_the_gateway(r)


def test_models_with_the_gateway_down_is_a_503_naming_it(client: TestClient) -> None:
    _assert_names_the_gateway(client.get("/v1/models", headers={"authorization": "Bearer x"}))
