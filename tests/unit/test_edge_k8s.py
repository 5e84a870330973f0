"""The k8s manifests: valid against the Kubernetes API schemas (kubernetes-validate bundles them, so
this runs offline), and what each object must hold (probes, port names, non-root, limits, PDB, HPA,
Envoy's config in a ConfigMap that Envoy itself accepts, Redis Cluster, the canary's Deployment)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.test_edge_config import LEAD_DESCRIPTOR, MESH_FILE, parse_bootstrap
from tollway.edge.k8s import build_k8s_manifests, redis_cluster_url
from tollway.edge.render import envoy_binary, validate_with_envoy
from tollway.mesh.topology import Mesh, load_mesh, parse_mesh

# The oldest Kubernetes these manifests claim to work on (gRPC probes are GA since 1.27).
K8S_VERSION = "1.30"


def _doc() -> dict[str, Any]:
    return yaml.safe_load(MESH_FILE.read_text())


def _mesh_with(**changes: Any) -> Mesh:
    doc = _doc()
    for s in doc["services"]:
        s.update(changes.get(s["name"], {}))
    doc["services"] += changes.get("_new", [])
    return parse_mesh(doc, MESH_FILE.parent, source=str(MESH_FILE))


def _canary_mesh() -> Mesh:
    return _mesh_with(
        gateway={"replicas": 2, "canary": {"version": "v2", "port": 50061, "weight_percent": 10}},
        router={"canary": {"version": "v3", "port": 50065, "weight_percent": 25}},
    )


def _all_docs(files: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for docs in files.values() for d in docs]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("mesh_name", ["committed", "canary"])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(mesh_name: str) -> None:
    mesh = load_mesh(MESH_FILE) if mesh_name == "committed" else _canary_mesh()
    for doc in _all_docs(build_k8s_manifests(mesh)):
        # strict: an unknown field (a typo) fails too, not only a wrong type.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The check above can fail: a misspelt field and a wrong type are both caught."""
    deployment = build_k8s_manifests(load_mesh(MESH_FILE))["router.yaml"][0]
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSION, strict=True)


def test_each_service_gets_deployment_service_pdb_and_hpa() -> None:
    mesh = load_mesh(MESH_FILE)
    files = build_k8s_manifests(mesh)
    for s in mesh.enabled_services:
        name = s.name.replace("_", "-")
        docs = files[f"{name}.yaml"]
        deployment = _by_kind(docs, "Deployment")[name]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        [container] = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["command"] == ["python", "-m", f"tollway.{s.name}"]
        resources = container["resources"]
        assert set(resources) == {"requests", "limits"}
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
        env = {e["name"]: e.get("value") for e in container["env"]}  # secrets come by reference (valueFrom)
        assert env["TOLLWAY_REDIS_URL"] == redis_cluster_url(mesh)
        assert env["TOLLWAY_REDIS_URL"].startswith("redis+cluster://redis-0.redis.tollway.svc.cluster.local:")
        port = container["ports"][0]
        if s.protocol == "grpc":
            assert port == {"name": "grpc", "containerPort": s.port, "protocol": "TCP"}
            assert container["readinessProbe"]["grpc"] == {"port": s.port, "service": s.grpc_services[0]}
            assert container["livenessProbe"]["grpc"] == {"port": s.port, "service": ""}
            assert container["startupProbe"]["grpc"] == {"port": s.port, "service": ""}
        service = _by_kind(docs, "Service")[name]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"][0]["targetPort"] == port["name"]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        pdb = _by_kind(docs, "PodDisruptionBudget")[name]
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        hpa = _by_kind(docs, "HorizontalPodAutoscaler")[name]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] == s.replicas <= hpa["spec"]["maxReplicas"]


def test_callers_reach_callees_through_envoys_mesh_listener() -> None:
    files = build_k8s_manifests(load_mesh(MESH_FILE))
    container = files["gateway.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}  # secrets come by reference (valueFrom)
    assert env["TOLLWAY_GATEWAY_ROUTER_ADDR"] == "envoy-mesh.tollway.svc.cluster.local:8081"
    mesh_service = _by_kind(files["envoy.yaml"], "Service")["envoy-mesh"]
    assert mesh_service["spec"]["ports"][0]["port"] == 8081


def test_a_service_added_to_the_mesh_gets_its_manifests() -> None:
    audit = {"name": "audit", "port": 50079, "grpc_services": ["tollway.audit.v1.AuditService"], "calls": ["gateway"]}
    files = build_k8s_manifests(_mesh_with(_new=[audit]))
    kinds = [d["kind"] for d in files["audit.yaml"]]
    assert kinds == ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    config = yaml.safe_load(_by_kind(files["envoy.yaml"], "ConfigMap")["envoy-config"]["data"]["envoy.yaml"])
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    address = clusters["audit"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "audit.tollway.svc.cluster.local", "port_value": 50079}


def test_a_canary_is_a_second_deployment_weighted_in_envoys_routes() -> None:
    files = build_k8s_manifests(_canary_mesh())
    docs = files["router.yaml"]
    deployments = _by_kind(docs, "Deployment")
    assert deployments["router"]["spec"]["replicas"] == 1 and deployments["router-v3"]["spec"]["replicas"] == 1
    stable_labels = deployments["router"]["spec"]["template"]["metadata"]["labels"]
    canary_labels = deployments["router-v3"]["spec"]["template"]["metadata"]["labels"]
    services = _by_kind(docs, "Service")
    # Each Service selects its own version only: the split is Envoy's, not the pod count's.
    assert services["router"]["spec"]["selector"].items() <= stable_labels.items()
    assert not services["router"]["spec"]["selector"].items() <= canary_labels.items()
    assert services["router-v3"]["spec"]["selector"].items() <= canary_labels.items()
    # The HPA scales the stable Deployment only.
    assert _by_kind(docs, "HorizontalPodAutoscaler")["router"]["spec"]["scaleTargetRef"]["name"] == "router"

    config = yaml.safe_load(_by_kind(files["envoy.yaml"], "ConfigMap")["envoy-config"]["data"]["envoy.yaml"])
    mesh_listener = next(x for x in config["static_resources"]["listeners"] if x["name"] == "mesh")
    routes = mesh_listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    router_routes = [r for r in routes["routes"] if r["name"].startswith("router:")]
    weighted = next(r for r in router_routes if "weighted_clusters" in r["route"])
    assert {c["name"]: c["weight"] for c in weighted["route"]["weighted_clusters"]["clusters"]} == {
        "router": 75, "router_v3": 25,
    }
    assert any(r["match"].get("headers") and r["route"].get("cluster") == "router_v3" for r in router_routes)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    canary = clusters["router_v3"]
    assert canary["type"] == "STRICT_DNS"
    address = canary["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["address"] == "router-v3.tollway.svc.cluster.local"
    assert canary["health_checks"][0]["grpc_health_check"] == {"service_name": "tollway.router.v1.RouterService"}


def test_envoys_configmap_is_a_config_envoy_accepts(tmp_path: Path) -> None:
    files = build_k8s_manifests(_canary_mesh())
    text = _by_kind(files["envoy.yaml"], "ConfigMap")["envoy-config"]["data"]["envoy.yaml"]
    config = yaml.safe_load(text)
    parse_bootstrap(config)
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    deployment = _by_kind(files["envoy.yaml"], "Deployment")["envoy"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["volumes"][0]["configMap"]["name"] == "envoy-config"
    if not LEAD_DESCRIPTOR.exists():
        pytest.skip("build/protos/tollway.pb is missing: run ./scripts/gen_protos.sh")
    # The pod's descriptor path swapped for this checkout's, which holds the same protos.
    local = tmp_path / "envoy.yaml"
    local.write_text(text.replace("/etc/tollway/descriptor/tollway.pb", str(LEAD_DESCRIPTOR)))
    ok, output = validate_with_envoy(local, envoy_binary())
    assert ok, output


def test_redis_is_a_three_master_cluster_with_aof() -> None:
    files = build_k8s_manifests(load_mesh(MESH_FILE))
    docs = files["redis.yaml"]
    statefulset = _by_kind(docs, "StatefulSet")["redis"]
    assert statefulset["spec"]["replicas"] == 6
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes"
    assert args[args.index("--appendonly") + 1] == "yes"
    # The settings every redis-server of Tollway runs with (compact budget records).
    assert args[args.index("--hash-max-listpack-value") + 1] == "1024"
    job = _by_kind(docs, "Job")["redis-cluster-create"]
    command = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    members = command.split("--cluster create ")[1]
    assert "--cluster-replicas 1" in members
    assert members.count(".redis.tollway.svc.cluster.local:") == 6
