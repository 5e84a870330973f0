"""The surface's front door: model traffic goes straight to its handler, everything else through
Starlette, with the same answers, errors and metrics either way."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from tollway.openai_compat.dispatch import Dispatch
from tollway.openai_compat.service import OpenAICompatApp


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _count(route: str, status: str) -> float:
    return REGISTRY.get_sample_value("tollway_openai_compat_requests_total", {"route": route, "status": status}) or 0.0


@pytest.fixture
def api() -> OpenAICompatApp:
    return OpenAICompatApp(f"127.0.0.1:{_closed_port()}", 1 << 20)


@pytest.fixture
def client(api: OpenAICompatApp) -> Iterator[TestClient]:
    with TestClient(Dispatch(api)) as c:  # the lifespan still reaches Starlette, which opens the channel
        yield c


AUTH = {"authorization": "Bearer x"}


def test_a_direct_route_answers_as_its_handler_does_and_is_counted(client: TestClient) -> None:
    before = _count("/v1/chat/completions", "400")
    r = client.post("/v1/chat/completions", content=b"{not json", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["content-type"] == "application/json"
    assert _count("/v1/chat/completions", "400") == before + 1


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/messages": {**CHAT, "max_tokens": 5},
    "/v1/responses": {"model": "m", "input": "hi"},
    "/v1/embeddings": {"model": "m", "input": "hi"},
}


@pytest.mark.parametrize("path", list(BODIES))
def test_every_direct_route_reaches_its_handler(client: TestClient, path: str) -> None:
    # The gateway is down: each handler's own 503 naming it, never Starlette's 404.
    r = client.post(path, json=BODIES[path], headers={**AUTH, "anthropic-version": "2023-06-01"})
    assert r.status_code == 503, r.text
    assert "gateway is unavailable" in r.text


def test_other_methods_and_paths_still_go_through_starlette(client: TestClient) -> None:
    assert client.get("/v1/chat/completions", headers=AUTH).status_code == 405
    r = client.post("/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and "no such path" in r.json()["error"]["message"]
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_handler_that_raises_is_a_500_in_openai_shape_and_counted(api: OpenAICompatApp) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    api.chat_completions = broken  # type: ignore[method-assign]
    before = _count("/v1/chat/completions", "500")
    with TestClient(Dispatch(api)) as client:
        r = client.post("/v1/chat/completions", json={}, headers=AUTH)
    assert r.status_code == 500
    assert r.json()["error"] == {
        "message": "internal error in openai_compat; see the service log",
        "type": "api_error",
        "param": None,
        "code": None,
    }
    assert _count("/v1/chat/completions", "500") == before + 1
