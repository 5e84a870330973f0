"""Envoy closes idle upstream connections before the HTTP services' keep-alive does (issue 13).

A server that closes an idle connection races Envoy reusing it; the request Envoy sends on it
fails as a 503 "connection termination". So every cluster carries an upstream idle timeout, and
the uvicorn servers Envoy talks to (the OpenAI surface, alone or co-located) keep an idle
connection open longer than that.
"""

from __future__ import annotations

from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from tests.unit.test_edge_config import _import_any_types
from tollway.colocate import __main__ as colocate_main
from tollway.edge.envoy_config import UPSTREAM_IDLE_TIMEOUT_S, build_envoy_config
from tollway.mesh.topology import load_mesh
from tollway.openai_compat import __main__ as openai_compat_main

MESH_FILE = Path(__file__).resolve().parents[2] / "deploy" / "mesh.yaml"


def test_every_cluster_closes_idle_upstream_connections_first() -> None:
    cfg = build_envoy_config(load_mesh(MESH_FILE))
    _import_any_types(cfg)
    boot = json_format.ParseDict(cfg, bootstrap_pb2.Bootstrap())  # Envoy's own schema accepts it
    assert boot.static_resources.clusters
    for cluster in cfg["static_resources"]["clusters"]:
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert options["common_http_protocol_options"]["idle_timeout"] == f"{UPSTREAM_IDLE_TIMEOUT_S}s", cluster["name"]


def test_the_http_services_keep_idle_connections_longer_than_envoy() -> None:
    # Margin for a loaded loop whose keep-alive timer fires late, and for Envoy's own timer.
    for keep_alive in (openai_compat_main.KEEP_ALIVE_S, colocate_main.KEEP_ALIVE_S):
        assert keep_alive >= UPSTREAM_IDLE_TIMEOUT_S + 10


def test_the_colocated_http_server_is_configured_with_it() -> None:
    server = colocate_main.Uvicorn("openai_compat", app=object(), host="127.0.0.1", port=0)
    assert server.config.timeout_keep_alive == colocate_main.KEEP_ALIVE_S
