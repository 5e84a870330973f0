"""deploy/mesh.yaml loading: values, port overrides, and errors that name the key and the value."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway.mesh.topology import (
    REPLICA_PORT_STEP,
    Endpoint,
    MeshError,
    load_mesh,
    parse_mesh,
    parse_port_overrides,
)

ROOT = Path(__file__).resolve().parents[2]
MESH_FILE = ROOT / "deploy" / "mesh.yaml"


@pytest.fixture()
def doc() -> dict[str, Any]:
    return yaml.safe_load(MESH_FILE.read_text())


def _svc(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["services"] if s["name"] == name)


# --------------------------------------------------------------------------------------------------
# The committed topology


def test_committed_mesh_has_the_documented_ports() -> None:
    mesh = load_mesh(MESH_FILE)
    assert mesh.edge.listen == Endpoint("127.0.0.1", 8080)
    assert mesh.edge.admin == Endpoint("127.0.0.1", 9901)
    assert mesh.edge.admin.is_loopback()
    assert mesh.redis.endpoint.port == 6390 and mesh.redis.appendonly
    assert mesh.redis.url == "redis://127.0.0.1:6390/0"
    assert mesh.local_model.base_url == "http://127.0.0.1:8091/v1"
    assert mesh.edge.descriptor_set == ROOT / "build" / "protos" / "tollway.pb"
    ports = {s.name: s.port for s in mesh.services}
    assert ports == {
        "gateway": 50051, "cache": 50052, "prompts": 50053, "budget": 50054, "router": 50055,
        "embedding": 50056, "retrieval": 50057, "openai_compat": 8090, "jobs": 50058,
    }


def test_committed_mesh_enables_and_exposes_the_right_services() -> None:
    mesh = load_mesh(MESH_FILE)
    enabled = [s.name for s in mesh.enabled_services]
    assert enabled == [
        "gateway",
        "cache",
        "prompts",
        "budget",
        "router",
        "embedding",
        "retrieval",
        "openai_compat",
        "jobs",
    ]
    assert {s.name for s in mesh.services if s.public} == {"gateway", "openai_compat", "jobs"}
    gateway = mesh.service("gateway")
    assert gateway.grpc_services == ("tollway.gateway.v1.GatewayService", "tollway.gateway.v1.InsightsService")
    assert gateway.grpc_path_prefixes == (
        "/tollway.gateway.v1.GatewayService/",
        "/tollway.gateway.v1.InsightsService/",
    )
    compat = mesh.service("openai_compat")
    assert compat.protocol == "http"
    assert compat.public_paths[:3] == ("/v1/chat/completions", "/v1/models", "/openapi.json")
    # Unserved OpenAI paths go to openai_compat too, for a 404 in OpenAI's shape.
    assert "/v1/embeddings" in compat.public_paths


def test_dataclasses_are_frozen() -> None:
    mesh = load_mesh(MESH_FILE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mesh.service("gateway").public = False  # type: ignore[misc]


def test_unknown_service_lookup_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"no service 'gatway'.*gateway, cache"):
        load_mesh(MESH_FILE).service("gatway")


# --------------------------------------------------------------------------------------------------
# Replicas and canary


def test_replica_ports_step_from_the_first(doc: dict[str, Any]) -> None:
    _svc(doc, "gateway")["replicas"] = 3
    mesh = parse_mesh(doc, ROOT / "deploy")
    assert [e.port for e in mesh.service("gateway").endpoints] == [
        50051, 50051 + REPLICA_PORT_STEP, 50051 + 2 * REPLICA_PORT_STEP,
    ]
    assert mesh.service("gateway").replicas == 3


def test_replica_ports_can_be_listed(doc: dict[str, Any]) -> None:
    _svc(doc, "router").update(replicas=2, replica_ports=[50055, 51055])
    assert [e.port for e in parse_mesh(doc).service("router").endpoints] == [50055, 51055]


def test_canary_is_loaded(doc: dict[str, Any]) -> None:
    _svc(doc, "gateway")["canary"] = {"version": "v2", "port": 50061, "weight_percent": 10}
    canary = parse_mesh(doc).service("gateway").canary
    assert canary is not None
    assert (canary.version, canary.endpoint.port, canary.weight_percent) == ("v2", 50061, 10)


# --------------------------------------------------------------------------------------------------
# Port overrides


def test_port_overrides_move_listeners_and_services(doc: dict[str, Any]) -> None:
    _svc(doc, "gateway").update(replicas=2, canary={"port": 50061, "weight_percent": 10})
    mesh = parse_mesh(doc, ports={
        "edge": 41000, "admin": 41001, "mesh": 41002, "redis": 41003, "local_model": 41004,
        "gateway": 41010, "gateway.canary": 41012, "cache": 41020,
    })
    assert (mesh.edge.listen.port, mesh.edge.admin.port, mesh.edge.mesh_listen.port) == (41000, 41001, 41002)
    assert mesh.redis.url == "redis://127.0.0.1:41003/0"
    assert mesh.local_model.endpoint.port == 41004
    gateway = mesh.service("gateway")
    # The second replica keeps its offset from a moved first replica.
    assert [e.port for e in gateway.endpoints] == [41010, 41010 + REPLICA_PORT_STEP]
    assert gateway.canary is not None and gateway.canary.endpoint.port == 41012
    assert mesh.service("cache").port == 41020
    assert mesh.service("router").port == 50055  # untouched


def test_one_replica_can_be_overridden(doc: dict[str, Any]) -> None:
    _svc(doc, "gateway")["replicas"] = 2
    mesh = parse_mesh(doc, ports={"gateway.0": 41010, "gateway.1": 41777})
    assert [e.port for e in mesh.service("gateway").endpoints] == [41010, 41777]


def test_with_ports_on_a_loaded_mesh() -> None:
    mesh = load_mesh(MESH_FILE).with_ports({"gateway": 41010})
    assert mesh.service("gateway").port == 41010


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ({"gatewy": 41000}, r"port override gatewy=41000: unknown name 'gatewy'.*gateway, cache"),
        ({"gateway": 70000}, r"port override gateway=70000: not a port"),
        ({"gateway": "x"}, r"port override gateway='x': not a port"),
        ({"gateway.canary": 41000}, r"'gateway' has no canary"),
        ({"gateway.3": 41000}, r"'gateway' has replicas 0..0; '3' is not one"),
        ({"gateway": 50052}, r"services.cache.port: 50052 port is already used by services.gateway.port"),
        ({"edge": 9901}, r"edge.admin: 9901 port is already used by edge.listen"),
    ],
)
def test_bad_port_overrides_are_named(ports: dict[str, Any], message: str) -> None:
    with pytest.raises(MeshError, match=message):
        load_mesh(MESH_FILE, ports=ports)


def test_parse_port_overrides() -> None:
    assert parse_port_overrides(["edge=1", "gateway.canary=2"]) == {"edge": 1, "gateway.canary": 2}
    with pytest.raises(MeshError, match=r"--port 'edge': expected NAME=PORT"):
        parse_port_overrides(["edge"])
    with pytest.raises(MeshError, match=r"--port 'edge=x': port 'x' is not an integer"):
        parse_port_overrides(["edge=x"])


# --------------------------------------------------------------------------------------------------
# Bad input: each error names the key and the value


def _set(path: str, value: Any):
    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        parts = path.split(".")
        for part in parts[:-1]:
            node = _svc(node, part[1:]) if part.startswith("@") else node[part]
        node[parts[-1]] = value
    return apply


BAD = [
    (_set("version", 2), r"version: 2 unsupported"),
    (_set("edge.listen", "8080"), r"edge.listen: '8080' must be HOST:PORT"),
    (_set("edge.listen", "127.0.0.1:99999"), r"edge.listen: '127.0.0.1:99999' has a port outside"),
    (_set("edge.admin", "0.0.0.0:9901"), r"edge.admin: '0.0.0.0:9901' must be a loopback address"),
    (_set("edge.max_request_body_bytes", "1MB"), r"edge.max_request_body_bytes: '1MB' is not an integer"),
    (_set("edge.max_request_body_bytes", 10), r"edge.max_request_body_bytes: 10 is not in \[1024, 268435456\]"),
    (_set("edge.cors_origins", ["localhost:3000"]), r"edge.cors_origins\[0\]: 'localhost:3000' must be an origin"),
    (_set("edge.mesh_listn", "127.0.0.1:1"), r"edge.mesh_listn: unknown key \(known here: .*mesh_listen"),
    (_set("redis.port", True), r"redis.port: True is not a port"),
    (_set("@gateway.port", 70000), r"services\[0\].port: 70000 is not a port"),
    (_set("@gateway.port", "50051"), r"services\[0\].port: '50051' is not a port"),
    (_set("@gateway.replicas", 0), r"services\[0\].replicas: 0 is not in \[1, 64\]"),
    (_set("@gateway.replica_ports", [50051, 50151]),
     r"services\[0\].replica_ports: \[50051, 50151\] must list exactly 1"),
    (_set("@gateway.replcas", 2), r"services\[0\].replcas: unknown key"),
    (_set("@gateway.name", "Gateway"), r"services\[0\].name: 'Gateway' must be lowercase"),
    (_set("@gateway.protocol", "grpcs"), r"services\[0\].protocol: 'grpcs' must be 'grpc' or 'http'"),
    (_set("@gateway.grpc_services", ["tollway.gateway.v1.Gateway"]),
     r"services\[0\].grpc_services\[0\]: 'tollway.gateway.v1.Gateway' must be a full name like "
     r"tollway.gateway.v1.GatewayService"),
    (_set("@cache.grpc_services", ["tollway.gateway.v1.GatewayService"]), r"services\[1\].grpc_services\[0\]"),
    (_set("@gateway.public_paths", ["/v1/x"]), r"services\[0\].public_paths: \['/v1/x'\] a gRPC service"),
    (_set("@openai_compat.public_paths", []), r"services\[7\].public_paths: \[\] a public HTTP service must list"),
    (_set("@openai_compat.public_paths", ["/v1/models/"]),
     r"services\[7\].public_paths\[0\]: '/v1/models/' must be an absolute path"),
    (_set("@gateway.canary", {"port": 50061, "weight_percent": 150}),
     r"services\[0\].canary.weight_percent: 150 is not in \[0, 100\]"),
    (_set("@gateway.canary", {"port": 50061}), r"services\[0\].canary.weight_percent: required key is missing"),
    (_set("@gateway.canary", {"port": 50061, "weight_percent": 5, "version": "stable"}),
     r"services\[0\].canary.version: 'stable' must be a DNS label other than 'stable'"),
    (_set("@gateway.canary", {"port": 50052, "weight_percent": 5}),
     r"services.cache.port: 50052 port is already used by services.gateway.canary.port"),
    (_set("@cache.port", 50051), r"services.cache.port: 50051 port is already used by services.gateway.port"),
    (_set("@openai_compat.name", "cache"), r"services\[7\].name: 'cache' is already used by services\[1\]"),
    (lambda doc: [_set("@retrieval.enabled", False)(doc), _set("@gateway.calls", ["retrieval"])(doc)],
     r"services.gateway.calls\[0\]: 'retrieval' must be another enabled gRPC"),
    (_set("@gateway.calls", ["nope"]), r"services.gateway.calls\[0\]: 'nope' is not a service of this mesh"),
    (_set("@gateway.public", "yes"), r"services\[0\].public: 'yes' is not true or false"),
    (_set("@openai_compat.enabled", False), None),  # still fine: the gateway is public
]


@pytest.mark.parametrize(("mutate", "message"), BAD)
def test_bad_values_fail_naming_key_and_value(doc: dict[str, Any], mutate: Any, message: str | None) -> None:
    mutate(doc)
    if message is None:
        parse_mesh(doc, source="deploy/mesh.yaml")
        return
    with pytest.raises(MeshError, match=r"^deploy/mesh.yaml.*" + message):
        parse_mesh(doc, source="deploy/mesh.yaml")


def test_no_public_service_is_an_error(doc: dict[str, Any]) -> None:
    for s in doc["services"]:
        s["public"] = False
        s.pop("public_paths", None)
    with pytest.raises(MeshError, match="no enabled service is public"):
        parse_mesh(doc)


def test_missing_key_is_named(doc: dict[str, Any]) -> None:
    del doc["edge"]["descriptor_set"]
    with pytest.raises(MeshError, match=r"edge.descriptor_set: required key is missing"):
        parse_mesh(doc)


def test_missing_and_malformed_files(tmp_path: Path, doc: dict[str, Any]) -> None:
    with pytest.raises(MeshError, match=r"nope.yaml: cannot read the mesh file"):
        load_mesh(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("edge: [unclosed\n")
    with pytest.raises(MeshError, match=r"bad.yaml: not valid YAML"):
        load_mesh(bad)
    bad.write_text("- a list\n")
    with pytest.raises(MeshError, match=r"the document: \['a list'\] is not a mapping"):
        load_mesh(bad)


def test_relative_descriptor_path_is_relative_to_the_mesh_file(tmp_path: Path, doc: dict[str, Any]) -> None:
    d = copy.deepcopy(doc)
    d["edge"]["descriptor_set"] = "protos/x.pb"
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "mesh.yaml"
    path.write_text(yaml.safe_dump(d))
    assert load_mesh(path).edge.descriptor_set == tmp_path / "sub" / "protos" / "x.pb"
