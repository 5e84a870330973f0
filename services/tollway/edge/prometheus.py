"""Prometheus's scrape config, generated from deploy/mesh.yaml like the Envoy config and the manifests.

Every process that runs serves one metrics endpoint, on its port plus the mesh's
``observability.metrics_port_offset``: a service alone (each replica and canary its own), or a
process group (``processes:`` in mesh.yaml, the co-located layout) on its first gRPC member's port,
since the members of one process share one Prometheus registry. :func:`scrape_targets` is the one
place that rule lives: the launcher sets the services' metrics ports from it, and the scrape config
is written from the same list, so the two cannot disagree.

    python -m tollway.edge --mesh deploy/mesh.yaml --prometheus-out deploy/prometheus [--layout split]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml

from tollway.mesh.topology import Endpoint, Mesh, Service

Layout = Literal["split", "colocated"]

# The rule files in deploy/prometheus/, copied next to a generated config (Prometheus resolves
# rule_files relative to the config file).
RULE_FILES = ("recording.yml", "alerts.yml")
RULES_DIR = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"


@dataclasses.dataclass(frozen=True)
class ScrapeTarget:
    """One metrics endpoint: one running process.

    Attributes:
        process: The process's name as the launcher calls it (`gateway`, `cache-1`,
            `gateway-canary`, `core` for a group); the `process` label of its series.
        services: The services whose metrics it serves.
        metrics: Where its /metrics listens.
        metrics_owner: The service whose ``metrics_port`` setting opens that endpoint (a group's
            first gRPC member; the others in the group get none).
    """

    process: str
    services: tuple[str, ...]
    metrics: Endpoint
    metrics_owner: str


def scrape_targets(mesh: Mesh, layout: Layout, running: Iterable[str] | None = None) -> tuple[ScrapeTarget, ...]:
    """Every process's metrics endpoint, in the file order of the services.

    Args:
        mesh: The topology.
        layout: ``colocated`` runs the mesh's process groups (as ``Mesh.colocated`` keeps them);
            ``split`` runs every service alone.
        running: The services started; every enabled one when None.
    """
    wanted = None if running is None else set(running)
    groups = mesh.colocated(wanted) if layout == "colocated" else ()
    grouped = {m: g for g in groups for m in g.services}
    offset = mesh.observability
    out: list[ScrapeTarget] = []
    done: set[str] = set()
    for service in mesh.enabled_services:
        if wanted is not None and service.name not in wanted:
            continue
        group = grouped.get(service.name)
        if group is not None:
            if group.name in done:
                continue
            done.add(group.name)
            members = [mesh.service(m) for m in group.services]
            owner = next((m for m in members if m.protocol == "grpc"), members[0])
            for i, process in enumerate(group.instance_names()):
                out.append(
                    ScrapeTarget(process, group.services, offset.metrics_endpoint(owner.endpoints[i]), owner.name)
                )
            continue
        for process, endpoint in instances(service):
            out.append(ScrapeTarget(process, (service.name,), offset.metrics_endpoint(endpoint), service.name))
    return tuple(out)


def instances(service: Service) -> list[tuple[str, Endpoint]]:
    """A service's instances as the launcher names them: ``name`` alone, ``name-<i>`` for replicas,
    ``name-canary``."""
    out = [
        (f"{service.name}-{i}" if service.replicas > 1 else service.name, e) for i, e in enumerate(service.endpoints)
    ]
    if service.canary:
        out.append((f"{service.name}-canary", service.canary.endpoint))
    return out


def build_prometheus_config(
    mesh: Mesh, layout: Layout, running: Iterable[str] | None = None, *, with_envoy: bool = True
) -> dict[str, Any]:
    """The prometheus.yml document: the mesh's processes, Envoy's admin stats, Prometheus itself.

    Args:
        mesh: The topology.
        layout: As for :func:`scrape_targets`.
        running: The services started; every enabled one when None.
        with_envoy: Scrape Envoy's ``/stats/prometheus`` on the admin listener.
    """
    interval = f"{mesh.observability.scrape_interval_s}s"
    tollway = [
        {
            "targets": [t.metrics.address],
            "labels": {"process": t.process, "services": ",".join(t.services), "layout": layout},
        }
        for t in scrape_targets(mesh, layout, running)
    ]
    jobs: list[dict[str, Any]] = [{"job_name": "tollway", "static_configs": tollway}]
    if with_envoy:
        jobs.append(
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [mesh.edge.admin.address], "labels": {"process": "envoy"}}],
            }
        )
    jobs.append(
        {
            "job_name": "prometheus",
            "static_configs": [
                {"targets": [mesh.observability.prometheus.address], "labels": {"process": "prometheus"}}
            ],
        }
    )
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": list(RULE_FILES),
        "scrape_configs": jobs,
    }


def render_prometheus_yaml(config: dict[str, Any], source: str) -> str:
    """The config as YAML, headed by where it came from (so nobody edits it by hand)."""
    head = (
        f"# Generated from {source} by `python -m tollway.edge --prometheus-out`; do not edit.\n"
        "# The launcher writes its own copy (with the ports it runs on) into the run dir.\n"
    )
    return head + yaml.safe_dump(config, sort_keys=False)


def write_prometheus_dir(config: dict[str, Any], out_dir: Path, source: str, name: str = "prometheus.yml") -> Path:
    """Writes the config as ``out_dir/name`` with the rule files beside it (unless it is their home).

    Returns:
        The config file's path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(render_prometheus_yaml(config, source), encoding="utf-8")
    if out_dir.resolve() != RULES_DIR:
        for rule_file in RULE_FILES:
            (out_dir / rule_file).write_bytes((RULES_DIR / rule_file).read_bytes())
    return path
