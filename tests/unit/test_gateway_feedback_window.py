"""How long a call can be given feedback is a setting (``TOLLWAY_GATEWAY_FEEDBACK_WINDOW_S``): the
call index keeps each call's attribution that long in Redis, its largest resident use per request
(bench/redis_memory.py), so an operator sizes Redis by it."""

from __future__ import annotations

from typing import Any

import pytest

from tollway.gateway import __main__ as gateway_main
from tollway.gateway.config import GatewayConfig
from tollway.gateway.insights import Viewer, feedback_target
from tollway.gateway.store import GatewayStore
from tollway.mesh.config import MeshConfig
from tollway.mesh.errors import NotFound


def test_the_window_defaults_to_thirty_days_and_must_be_positive() -> None:
    assert GatewayConfig().feedback_window_s == 30 * 86400
    with pytest.raises(ValueError, match=r"TOLLWAY_GATEWAY_FEEDBACK_WINDOW_S.*Must be above 0"):
        GatewayConfig(feedback_window_s=0)


def test_the_gateway_keeps_call_attributions_for_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[GatewayStore] = []

    class Recorded(GatewayStore):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(gateway_main, "GatewayStore", Recorded)
    gateway_main.build(GatewayConfig(feedback_window_s=7 * 86400), MeshConfig(redis_url="redis://127.0.0.1:1/0"))
    assert [s.call_index_ttl_s for s in made] == [7 * 86400]


def test_an_unknown_call_names_the_window() -> None:
    with pytest.raises(NotFound, match="calls of the last 7 days"):
        feedback_target(Viewer("acme", False), "r1", None, 7 * 86400)
    with pytest.raises(NotFound, match="calls of the last 3600 seconds"):
        feedback_target(Viewer("acme", False), "r1", None, 3600)
