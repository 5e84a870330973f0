"""Envoy's local replies when a service does not answer: a 503 naming it, in each surface's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tollway.edge.envoy_config import build_envoy_config
from tollway.mesh.topology import load_mesh

ROOT = Path(__file__).resolve().parents[2]


def mappers(listener: str) -> list[dict[str, Any]]:
    config = build_envoy_config(load_mesh(ROOT / "deploy" / "mesh.yaml"))
    found = next(x for x in config["static_resources"]["listeners"] if x["name"] == listener)
    hcm = found["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["local_reply_config"]["mappers"]


def is_upstream_down(mapper: dict[str, Any]) -> bool:
    return "response_flag_filter" in str(mapper["filter"])


def test_upstream_down_replies_come_first_and_name_the_cluster() -> None:
    public = mappers("public")
    down = [m for m in public if is_upstream_down(m)]
    # The first matching mapper wins: these must precede the generic 503 of the OpenAI paths.
    assert public[: len(down)] == down and len(down) == 4
    anthropic, openai, grpc_, json_ = down
    assert anthropic["body_format_override"]["json_format"]["error"]["type"] == "api_error"
    assert "%UPSTREAM_CLUSTER%" in anthropic["body_format_override"]["json_format"]["error"]["message"]
    assert openai["body_format_override"]["json_format"]["error"]["type"] == "service_unavailable"
    assert "%UPSTREAM_CLUSTER%" in openai["body_format_override"]["json_format"]["error"]["message"]
    assert "%UPSTREAM_CLUSTER%" in grpc_["body_format_override"]["text_format_source"]["inline_string"]
    body = json_["body_format_override"]["json_format"]
    assert body["code"] == 14
    assert body["details"][0]["reason"] == "SERVICE_UNAVAILABLE"
    assert body["details"][0]["metadata"] == {"dependency": "%UPSTREAM_CLUSTER%"}
    for m in down:
        assert {"key": "retry-after", "value": "1"}.items() <= m["headers_to_add"][0]["header"].items()
        assert all(f"'{flag}'" in str(m["filter"]) for flag in ("UF", "UH", "URX", "UC"))


def test_the_mesh_listener_names_the_service_too() -> None:
    mesh = mappers("mesh")
    assert mesh and all(is_upstream_down(m) for m in mesh)
    assert not any("error" in str(m.get("body_format_override", {}).get("json_format", {})) for m in mesh)
