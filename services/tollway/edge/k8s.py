"""Builds Kubernetes manifests for a mesh topology: a Deployment and a Service per enabled service.

What the manifests rely on from each service: it listens on `TOLLWAY_<SVC>_PORT` on the
interface `TOLLWAY_BIND_HOST`, serves `grpc.health.v1` (overall status "" for liveness, its first
gRPC service name for readiness), and finds the services it calls in
`TOLLWAY_<SVC>_<CALLEE>_ADDR`.

A canary becomes a second Deployment (`<name>-<version>`, one pod) behind the same Service. Inside
k8s the split is by pod count; the weighted split and `x-canary: 1` are Envoy's (mesh listener).
"""

from __future__ import annotations

from typing import Any

from tollway.mesh.topology import Mesh, Service

__all__ = ["build_k8s_manifests", "k8s_name"]

_PART_OF = "tollway"
_RUN_AS = 10001


def k8s_name(service: Service) -> str:
    """The DNS-1123 name of a service's k8s objects (`openai_compat` -> `openai-compat`)."""
    return service.name.replace("_", "-")


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
        "redis.yaml": _redis(mesh),
    }
    for s in mesh.enabled_services:
        docs = [_deployment(mesh, s, canary=False)]
        if s.canary:
            docs.append(_deployment(mesh, s, canary=True))
        docs.append(_service(mesh, s))
        files[f"{k8s_name(s)}.yaml"] = docs
    return files


def _dns(mesh: Mesh, name: str) -> str:
    return f"{name}.{mesh.k8s.namespace}.svc.cluster.local"


def _labels(s: Service) -> dict[str, str]:
    return {"app.kubernetes.io/name": k8s_name(s), "app.kubernetes.io/part-of": _PART_OF}


def _deployment(mesh: Mesh, s: Service, canary: bool) -> dict[str, Any]:
    version = s.canary.version if (canary and s.canary) else "stable"
    name = f"{k8s_name(s)}-{version}" if canary else k8s_name(s)
    selector = {**_labels(s), "app.kubernetes.io/version": version}
    port_name = "grpc" if s.protocol == "grpc" else "http"
    env = [
        {"name": f"TOLLWAY_{s.name.upper()}_PORT", "value": str(s.port)},
        {"name": "TOLLWAY_BIND_HOST", "value": mesh.k8s.bind_host},
        # NOT_SERVING for a while before refusing RPCs: endpoints and Envoy stop sending first.
        {"name": "TOLLWAY_SHUTDOWN_DRAIN_DELAY_S", "value": "5"},
        {"name": "TOLLWAY_REDIS_URL", "value": f"redis://{_dns(mesh, 'redis')}:{mesh.redis.endpoint.port}/0"},
    ]
    for callee in s.calls:
        target = mesh.service(callee)
        env.append({
            "name": f"TOLLWAY_{s.name.upper()}_{callee.upper()}_ADDR",
            "value": f"{_dns(mesh, k8s_name(target))}:{target.port}",
        })
    container: dict[str, Any] = {
        "name": k8s_name(s),
        "image": mesh.k8s.image,
        "command": ["python", "-m", f"tollway.{s.name}"],
        "ports": [{"name": port_name, "containerPort": s.port, "protocol": "TCP"}],
        "env": env,
        **_probes(s, port_name),
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": mesh.k8s.namespace, "labels": selector},
        "spec": {
            "replicas": 1 if canary else s.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "terminationGracePeriodSeconds": mesh.k8s.termination_grace_period_s,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": _RUN_AS,
                        "runAsGroup": _RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
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


def _service(mesh: Mesh, s: Service) -> dict[str, Any]:
    port_name = "grpc" if s.protocol == "grpc" else "http"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": k8s_name(s), "namespace": mesh.k8s.namespace, "labels": _labels(s)},
        "spec": {
            "selector": _labels(s),
            "ports": [{
                "name": port_name,
                "port": s.port,
                "targetPort": port_name,
                "protocol": "TCP",
                **({"appProtocol": "kubernetes.io/h2c"} if s.protocol == "grpc" else {}),
            }],
        },
    }


def _redis(mesh: Mesh) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/part-of": _PART_OF}
    port = mesh.redis.endpoint.port
    args = ["--port", str(port), "--protected-mode", "no", "--dir", "/data", "--save", ""]
    if mesh.redis.appendonly:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "redis", "namespace": mesh.k8s.namespace, "labels": labels},
            "spec": {
                "serviceName": "redis",
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {
                            "runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "redis",
                            "image": "redis:7.0",
                            "args": args,
                            "ports": [{"name": "redis", "containerPort": port, "protocol": "TCP"}],
                            "readinessProbe": {
                                "exec": {"command": ["redis-cli", "-p", str(port), "ping"]},
                                "periodSeconds": 5,
                            },
                            "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
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
            "metadata": {"name": "redis", "namespace": mesh.k8s.namespace, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": "redis", "port": port, "targetPort": "redis", "protocol": "TCP"}],
            },
        },
    ]
