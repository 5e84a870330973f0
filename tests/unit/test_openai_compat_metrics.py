"""The OpenAI surface's request metrics: every response counted by route and status, errors included."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from tollway.openai_compat.metrics import RequestMetrics, route_of


def _count(route: str, status: str) -> float:
    return REGISTRY.get_sample_value("tollway_openai_compat_requests_total", {"route": route, "status": status}) or 0.0


async def _call(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "method": "GET"}, receive, send)
    return sent


async def _answers(scope: dict[str, Any], receive: Any, send: Any) -> None:
    status = 404 if scope["path"].startswith("/v1/files") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _raises(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise RuntimeError("a bug before the answer")


@pytest.mark.parametrize(
    ("path", "route"),
    [("/v1/chat/completions", "/v1/chat/completions"), ("/v1/models/gpt-x", "/v1/models"),
     ("/v1/chat/completionsX", "other"), ("/wp-admin.php", "other")],
)
def test_paths_map_to_a_bounded_set_of_routes(path: str, route: str) -> None:
    assert route_of(path) == route


async def test_each_response_is_counted_with_its_status() -> None:
    app = RequestMetrics(_answers)
    ok, missing = _count("/v1/models", "200"), _count("other", "404")
    sent = await _call(app, "/v1/models")
    await _call(app, "/v1/files/abc")
    assert sent[0]["status"] == 200  # the response passes through unchanged
    assert _count("/v1/models", "200") == ok + 1
    assert _count("other", "404") == missing + 1


async def test_an_app_that_raises_is_counted_as_a_500_and_the_error_goes_on() -> None:
    before = _count("/v1/embeddings", "500")
    with pytest.raises(RuntimeError):
        await _call(RequestMetrics(_raises), "/v1/embeddings")
    assert _count("/v1/embeddings", "500") == before + 1
