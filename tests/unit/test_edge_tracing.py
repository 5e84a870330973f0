"""Envoy's OpenTelemetry tracer: added to every HTTP connection manager when spans go to OTLP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway.edge.envoy_config import build_envoy_config
from tollway.edge.render import envoy_binary, render_envoy_yaml, validate_with_envoy
from tollway.edge.tracing import (
    COLLECTOR_CLUSTER,
    TracingConfigError,
    collector_endpoint,
    tracing_settings,
    with_tracing,
)
from tollway.mesh.topology import Endpoint, parse_mesh

ROOT = Path(__file__).resolve().parents[2]
MESH_FILE = ROOT / "deploy" / "mesh.yaml"


def _config() -> dict[str, Any]:
    doc = yaml.safe_load(MESH_FILE.read_text())
    for s in doc["services"]:  # only the services the committed descriptor set is sure to hold
        s["grpc_services"] = s.get("grpc_services", [])[:1]
    return build_envoy_config(parse_mesh(doc, base_dir=MESH_FILE.parent), console_root=None)


def _hcms(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        f["typed_config"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]


def test_every_connection_manager_traces_to_the_collector() -> None:
    plain = _config()
    traced = with_tracing(plain, Endpoint("127.0.0.1", 4317), 0.25)
    hcms = _hcms(traced)
    assert len(hcms) == 2  # the public listener and the mesh listener
    for hcm in hcms:
        provider = hcm["tracing"]["provider"]
        assert provider["name"] == "envoy.tracers.opentelemetry"
        assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == COLLECTOR_CLUSTER
        assert hcm["tracing"]["random_sampling"] == {"value": 25.0}
    cluster = next(c for c in traced["static_resources"]["clusters"] if c["name"] == COLLECTOR_CLUSTER)
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 4317}
    # The config it was given is left as it was.
    assert all("tracing" not in hcm for hcm in _hcms(plain))
    assert all(c["name"] != COLLECTOR_CLUSTER for c in plain["static_resources"]["clusters"])


def test_envoy_accepts_the_traced_config(tmp_path: Path) -> None:
    descriptor = _config()  # needs build/protos/tollway.pb (make protos), as every Envoy config does
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_yaml(with_tracing(descriptor, Endpoint("127.0.0.1", 4317), 1.0), source="test"))
    ok, output = validate_with_envoy(path, envoy_binary())
    assert ok, output


def test_settings_come_from_the_services_own_variables() -> None:
    assert tracing_settings({}) is None
    assert tracing_settings({"TOLLWAY_OTEL_EXPORTER": "console"}) is None
    assert tracing_settings({"TOLLWAY_OTEL_EXPORTER": "otlp"}) == (Endpoint("127.0.0.1", 4317), 1.0)
    env = {"TOLLWAY_OTEL_EXPORTER": "otlp", "TOLLWAY_OTEL_ENDPOINT": "http://10.0.0.5:4317/"}
    got = tracing_settings({**env, "TOLLWAY_OTEL_SAMPLE_RATIO": "0.01"})
    assert got == (Endpoint("10.0.0.5", 4317), 0.01)


@pytest.mark.parametrize("value", ["collector", "collector:http", ":4317", "host:70000"])
def test_a_malformed_endpoint_is_named(value: str) -> None:
    with pytest.raises(TracingConfigError, match=r"TOLLWAY_OTEL_ENDPOINT.*" + value.replace(":", ":")):
        collector_endpoint(value)


@pytest.mark.parametrize("value", ["2", "-0.1", "half"])
def test_a_bad_sample_ratio_is_named(value: str) -> None:
    with pytest.raises(TracingConfigError, match=f"TOLLWAY_OTEL_SAMPLE_RATIO.*'{value}'"):
        tracing_settings({"TOLLWAY_OTEL_EXPORTER": "otlp", "TOLLWAY_OTEL_SAMPLE_RATIO": value})
