"""The deployment topology: `deploy/mesh.yaml` loaded into frozen dataclasses.

mesh.yaml is the one source for ports, replicas, canaries and the edge; the Envoy config
(`python -m tollway.edge`), the k8s manifests and the processes started by `tollway up` are all
derived from it. Every error names the key and the value, e.g.
`deploy/mesh.yaml: services[1].port: 70000 is not a port (1..65535)`.

Typical use:

    mesh = load_mesh("deploy/mesh.yaml", ports={"gateway": 40123, "edge": 40124})
    mesh.service("gateway").endpoints  # (Endpoint(host='127.0.0.1', port=40123),)

Co-location: a top-level `processes:` mapping names groups of services that share one process
(`core: [gateway, router, cache, budget, openai_compat]`); a member with a canary, disabled, or with
another replica count than the group's, runs apart (`Mesh.colocated`); members that all have
`replicas: N` run as N such processes. It is a deployment choice, not a code
fork: `tollway up` starts one process per group (`tollway.colocate`), each service keeps its port
and health there, and a caller reaches a callee of its own group through an in-process channel
(`inproc:<service>`, `tollway.mesh.inprocess`). A service in no group runs alone, as every service
does when the groups are ignored (the launcher's split layout, the k8s manifests).

Port override keys (`ports=` mapping, or `--port NAME=PORT` on the edge generator):
  `edge`, `admin`, `mesh` (the edge's public, admin and internal listeners), `redis`, `local_model`,
  `<service>` (its first replica; later replicas follow it unless set themselves),
  `<service>.<i>` (replica i, counted from 0), `<service>.canary` (the canary instance).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tollway.mesh import schema
from tollway.mesh.schema import REQUIRED, SchemaError

__all__ = [
    "REPLICA_PORT_STEP",
    "Canary",
    "Edge",
    "Endpoint",
    "K8s",
    "LocalModel",
    "Mesh",
    "MeshError",
    "ProcessGroup",
    "Redis",
    "Service",
    "load_mesh",
    "parse_mesh",
    "parse_port_overrides",
]

# Replica i of a service listens on `port + i * REPLICA_PORT_STEP` unless mesh.yaml lists its ports.
# 100 keeps replicas clear of the next service's port (services are numbered 50051, 50052, ...).
REPLICA_PORT_STEP = 100

Protocol = Literal["grpc", "http"]

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_PROCESS_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
_GRPC_SERVICE = re.compile(r"^tollway\.(?P<pkg>[a-z][a-z0-9_]*)\.v[1-9][0-9]*\.[A-Z][A-Za-z0-9]*Service$")
_VERSION = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_LOOPBACK_NAMES = {"localhost"}


class MeshError(SchemaError):
    """A mesh.yaml value (or a port override) is missing, of the wrong type or inconsistent.

    The message starts with the file and the key path and quotes the offending value.
    """


@dataclass(frozen=True)
class Endpoint:
    """A host and TCP port."""

    host: str
    port: int

    @property
    def address(self) -> str:
        """`host:port`, with IPv6 hosts in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def is_loopback(self) -> bool:
        """True when the host is `localhost` or a loopback IP address."""
        if self.host in _LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class Canary:
    """A second version of a service that takes a share of its traffic.

    Attributes:
        version: Label of the canary build (k8s label `version`, cluster name suffix); DNS-safe.
        endpoint: Where the canary instance listens.
        weight_percent: Share of requests sent to it, 0..100; `x-canary: 1` always reaches it.
    """

    version: str
    endpoint: Endpoint
    weight_percent: int


@dataclass(frozen=True)
class Service:
    """One service of the mesh.

    Attributes:
        name: Short name (`gateway`); the Python module is `tollway.<name>`.
        protocol: `grpc` (h2 upstream) or `http` (HTTP/1.1 upstream, e.g. openai_compat).
        grpc_services: Full gRPC service names it serves (`tollway.gateway.v1.GatewayService`).
        public: Whether the edge's public listener exposes it.
        public_paths: For a public HTTP service, the path prefixes routed to it (`/v1/models`).
        endpoints: One per replica; `endpoints[0]` is the default address of the service.
        canary: The canary instance, or None.
        enabled: False for services declared but not built yet: no route, cluster or manifest.
        health_path: For an HTTP service, the path Envoy polls for health (None: not checked).
        calls: The gRPC services it calls; each gets a `TOLLWAY_<NAME>_<CALLEE>_ADDR` in k8s.
    """

    name: str
    protocol: Protocol
    grpc_services: tuple[str, ...]
    public: bool
    public_paths: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    canary: Canary | None
    enabled: bool
    health_path: str | None
    calls: tuple[str, ...] = ()

    @property
    def port(self) -> int:
        """The port of the first replica."""
        return self.endpoints[0].port

    @property
    def replicas(self) -> int:
        """How many stable (non-canary) instances run."""
        return len(self.endpoints)

    @property
    def grpc_path_prefixes(self) -> tuple[str, ...]:
        """HTTP/2 path prefixes of its gRPC methods: `/tollway.gateway.v1.GatewayService/`."""
        return tuple(f"/{s}/" for s in self.grpc_services)


@dataclass(frozen=True)
class Edge:
    """The Envoy edge.

    Attributes:
        listen: Public listener (HTTP/1.1 JSON + SSE, gRPC-Web and h2c gRPC on one port).
        admin: Envoy admin interface; always loopback.
        mesh_listen: Internal h2c listener through which services reach each other's replicas.
        cors_origins: Browser origins allowed by CORS (exact match).
        max_request_body_bytes: Larger request bodies are refused with 413.
        descriptor_set: Absolute path of the FileDescriptorSet made by `make protos`.
        stream_idle_timeout_s: A stream with no bytes either way for this long is reset.
        connect_timeout_ms: Upstream TCP connect timeout.
    """

    listen: Endpoint
    admin: Endpoint
    mesh_listen: Endpoint
    cors_origins: tuple[str, ...]
    max_request_body_bytes: int
    descriptor_set: Path
    stream_idle_timeout_s: int
    connect_timeout_ms: int


@dataclass(frozen=True)
class Redis:
    """The shared Redis server."""

    endpoint: Endpoint
    appendonly: bool

    @property
    def url(self) -> str:
        """`redis://host:port/0`."""
        return f"redis://{self.endpoint.address}/0"


@dataclass(frozen=True)
class LocalModel:
    """The self-hosted OpenAI-compatible model server (llama.cpp)."""

    endpoint: Endpoint

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, `http://host:port/v1`."""
        return f"http://{self.endpoint.address}/v1"


@dataclass(frozen=True)
class K8s:
    """Settings used only by the k8s manifest generator."""

    namespace: str
    image: str
    bind_host: str
    termination_grace_period_s: int


@dataclass(frozen=True)
class Observability:
    """Where metrics are served and scraped (mesh.yaml's `observability`).

    Attributes:
        prometheus: Where the launcher's Prometheus listens; loopback only (its API is unauthenticated).
        metrics_port_offset: An instance's Prometheus endpoint listens on its own port plus this
            (gateway 50051 -> 51051); a process group serves one, on its first gRPC member's.
        scrape_interval_s: How often Prometheus scrapes every endpoint.
    """

    prometheus: Endpoint = Endpoint("127.0.0.1", 9095)
    metrics_port_offset: int = 1000
    scrape_interval_s: int = 5

    def metrics_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """The metrics endpoint of the instance listening on ``endpoint``."""
        return Endpoint(endpoint.host, endpoint.port + self.metrics_port_offset)


@dataclass(frozen=True)
class ProcessGroup:
    """Services that share one process (mesh.yaml's `processes`).

    Attributes:
        name: The process's name (in logs, `tollway status` and the pid file); not a service's name.
        services: Its services, in file order of `services:` (callees of one another need no order:
            every servicer is registered before any starts).
        replicas: How many such processes run (``Mesh.colocated``: the members' common replica
            count). Instance i serves each member on the member's replica-i port, so Envoy balances
            over the instances as over any replicas, and each instance's calls between its members
            stay in-process.
    """

    name: str
    services: tuple[str, ...]
    replicas: int = 1

    def instance_names(self) -> tuple[str, ...]:
        """The launcher's name of each instance: the group's name alone, or ``name-<i>``."""
        if self.replicas == 1:
            return (self.name,)
        return tuple(f"{self.name}-{i}" for i in range(self.replicas))


@dataclass(frozen=True)
class Mesh:
    """The whole topology. Build it with `load_mesh` or `parse_mesh`."""

    source: str
    host: str
    edge: Edge
    redis: Redis
    local_model: LocalModel
    k8s: K8s
    services: tuple[Service, ...]
    processes: tuple[ProcessGroup, ...] = ()
    observability: Observability = Observability()

    def colocated(self, running: Iterable[str] | None = None) -> tuple[ProcessGroup, ...]:
        """The process groups as they run: each with the members that can share a process.

        One process holds one instance of each member, so the members of a group share a replica
        count, which becomes the group's: with ``replicas: 2`` on every member, two processes run,
        the second serving each member on its replica-1 port. A member runs apart, as if it were in
        no group, when it is disabled, not among ``running`` (the services a launcher starts), has a
        canary (a separate instance behind Envoy), or has another replica count than most members
        (the count most members share; on a tie, the first member's). A group left with fewer than
        two members runs none of them together.

        Args:
            running: The services started; every enabled one when None.
        """
        wanted = None if running is None else set(running)
        out = []
        for group in self.processes:
            eligible = [
                s
                for m in group.services
                if (s := self.service(m)).enabled and s.canary is None and (wanted is None or m in wanted)
            ]
            counts = [s.replicas for s in eligible]
            if not counts:
                continue
            replicas = max(counts, key=lambda n: (counts.count(n), -counts.index(n)))
            members = tuple(s.name for s in eligible if s.replicas == replicas)
            if len(members) >= 2:
                out.append(ProcessGroup(group.name, members, replicas))
        return tuple(out)

    def split(self) -> Mesh:
        """A copy with no process groups: every service in a process of its own."""
        return dataclasses.replace(self, processes=())

    def service(self, name: str) -> Service:
        """Returns the service called `name` (enabled or not).

        Raises:
            KeyError: No such service in mesh.yaml; the message lists the known names.
        """
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no service {name!r} in {self.source}; known: {', '.join(self.names())}")

    def names(self) -> tuple[str, ...]:
        """Names of all declared services, in file order."""
        return tuple(s.name for s in self.services)

    @property
    def enabled_services(self) -> tuple[Service, ...]:
        """Services that run (and get routes, clusters and manifests), in file order."""
        return tuple(s for s in self.services if s.enabled)

    def with_ports(self, ports: Mapping[str, int]) -> Mesh:
        """Returns a copy with ports overridden (keys as in the module docstring).

        Raises:
            MeshError: Unknown key, bad port, or the result reuses a port.
        """
        return _apply_overrides(self, ports)


# --------------------------------------------------------------------------------------------------
# Loading


def load_mesh(
    path: str | Path, ports: Mapping[str, int] | None = None, replicas: Mapping[str, int] | None = None
) -> Mesh:
    """Loads and validates a mesh.yaml file.

    Relative paths inside it (the descriptor set) are resolved against the file's directory.

    Args:
        path: The mesh.yaml file.
        ports: Port overrides (see the module docstring), applied before the uniqueness check.
        replicas: Replica counts that replace the file's, by service or by process group (every
            member of ``core``, say; see :func:`with_replicas`).

    Returns:
        The validated topology.

    Raises:
        MeshError: The file is missing, is not YAML, or holds a bad value (the message names it).
    """
    doc = schema.load_yaml(path, what="the mesh file", error=MeshError)
    data = with_replicas(doc.data, replicas, str(path)) if replicas else doc.data
    return parse_mesh(data, base_dir=doc.path.resolve().parent, source=str(path), ports=ports)


def with_replicas(data: Any, replicas: Mapping[str, int], source: str = "mesh.yaml") -> Any:
    """A copy of a mesh document with other replica counts (``tollway up --replicas core=2``).

    A key names a service, or a process group, which sets every member (so that the group runs as
    that many processes). Later replicas take the usual ports (``port + 100 * i``).

    Raises:
        MeshError: An unknown name, a count below 1, or a service whose ``replica_ports`` the file
            lists (change the file instead).
    """
    r = _Reader(source)
    root = r.mapping(data, "")
    services = [dict(s) for s in r.get(root, "", "services", list) if isinstance(s, dict)]
    by_name = {s["name"]: s for s in services if isinstance(s.get("name"), str)}
    groups = r.get(root, "", "processes", dict, default={})
    for name, count in replicas.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise r.fail(f"replicas.{name}", count, "must be a whole number of at least 1")
        if name in by_name:
            members = [name]
        elif isinstance(groups.get(name), list):
            members = [m for m in groups[name] if m in by_name]
        else:
            known = ", ".join(sorted([*by_name, *groups]))
            raise r.fail("replicas", name, f"is neither a service nor a process group ({known})")
        for member in members:
            if "replica_ports" in by_name[member]:
                raise r.fail(f"replicas.{name}", count, f"{member} lists replica_ports in the file; change them there")
            by_name[member]["replicas"] = count
    return {**root, "services": services}


def parse_mesh(
    data: Any,
    base_dir: str | Path = ".",
    source: str = "mesh.yaml",
    ports: Mapping[str, int] | None = None,
) -> Mesh:
    """Validates an already-parsed mesh document.

    Args:
        data: The YAML document as plain Python objects.
        base_dir: Directory that relative paths are resolved against.
        source: Name used in error messages.
        ports: Port overrides (see the module docstring).

    Returns:
        The validated topology.

    Raises:
        MeshError: A value is missing, of the wrong type or inconsistent (the message names it).
    """
    r = _Reader(source)
    root = r.mapping(data, "")
    r.known_keys(
        root, "", {"version", "host", "edge", "redis", "local_model", "k8s", "services", "processes", "observability"}
    )
    version = r.get(root, "", "version", int)
    if version != 1:
        raise r.fail("version", version, "unsupported; this loader reads version 1")
    host = r.get(root, "", "host", str, default="127.0.0.1")

    edge = _parse_edge(r, r.get(root, "", "edge", dict), Path(base_dir))
    redis = _parse_redis(r, r.get(root, "", "redis", dict), host)
    local_model = LocalModel(
        endpoint=_parse_local_model(r, r.get(root, "", "local_model", dict)),
    )
    k8s = _parse_k8s(r, r.get(root, "", "k8s", dict, default={}))
    observability = _parse_observability(r, r.get(root, "", "observability", dict, default={}))
    raw_services = r.get(root, "", "services", list)
    if not raw_services:
        raise r.fail("services", raw_services, "must list at least one service")
    services = tuple(_parse_service(r, raw, f"services[{i}]", host) for i, raw in enumerate(raw_services))

    seen: dict[str, str] = {}
    for i, s in enumerate(services):
        if s.name in seen:
            raise r.fail(f"services[{i}].name", s.name, f"is already used by {seen[s.name]}")
        seen[s.name] = f"services[{i}]"

    processes = _parse_processes(r, r.get(root, "", "processes", dict, default={}), services)
    mesh = Mesh(
        source=source, host=host, edge=edge, redis=redis, local_model=local_model, k8s=k8s,
        services=services, processes=processes, observability=observability,
    )
    mesh = _apply_overrides(mesh, ports or {})
    _check_consistency(r, mesh)
    return mesh


def parse_port_overrides(items: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Parses `NAME=PORT` strings (the generator's `--port` flags) into a mapping.

    Raises:
        MeshError: An item is not `NAME=PORT` or PORT is not an integer.
    """
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise MeshError(f"--port {item!r}: expected NAME=PORT, e.g. gateway=50051")
        try:
            out[name] = int(value)
        except ValueError:
            raise MeshError(f"--port {item!r}: port {value!r} is not an integer") from None
    return out


def parse_replica_overrides(items: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Parses `NAME=N` strings (`tollway up --replicas`) into a mapping (see :func:`with_replicas`).

    Raises:
        MeshError: An item is not `NAME=N` or N is not a whole number of at least 1.
    """
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise MeshError(f"--replicas {item!r}: expected NAME=N, e.g. core=2")
        if not value.isdigit() or int(value) < 1:
            raise MeshError(f"--replicas {item!r}: {value!r} is not a whole number of at least 1")
        out[name] = int(value)
    return out


# --------------------------------------------------------------------------------------------------
# Sections


def _parse_edge(r: _Reader, raw: dict[str, Any], base_dir: Path) -> Edge:
    k = "edge"
    r.known_keys(raw, k, {
        "listen", "admin", "mesh_listen", "cors_origins", "max_request_body_bytes", "descriptor_set",
        "stream_idle_timeout_s", "connect_timeout_ms",
    })
    admin = r.address(raw, k, "admin")
    if not admin.is_loopback():
        raise r.fail(f"{k}.admin", admin.address, "must be a loopback address (the admin API is unauthenticated)")
    origins = r.get(raw, k, "cors_origins", list, default=[])
    for i, o in enumerate(origins):
        if not isinstance(o, str) or not re.match(r"^https?://[^/\s]+$", o):
            raise r.fail(f"{k}.cors_origins[{i}]", o, "must be an origin like http://localhost:3000 (no path)")
    descriptor = r.get(raw, k, "descriptor_set", str)
    return Edge(
        listen=r.address(raw, k, "listen"),
        admin=admin,
        mesh_listen=r.address(raw, k, "mesh_listen"),
        cors_origins=tuple(origins),
        max_request_body_bytes=r.int_in(raw, k, "max_request_body_bytes", 1024, 256 * 1024 * 1024),
        descriptor_set=(base_dir / descriptor).resolve(),
        stream_idle_timeout_s=r.int_in(raw, k, "stream_idle_timeout_s", 1, 24 * 3600, default=300),
        connect_timeout_ms=r.int_in(raw, k, "connect_timeout_ms", 1, 60_000, default=1000),
    )


def _parse_redis(r: _Reader, raw: dict[str, Any], host: str) -> Redis:
    r.known_keys(raw, "redis", {"port", "appendonly"})
    return Redis(
        endpoint=Endpoint(host, r.port(raw, "redis", "port")),
        appendonly=r.get(raw, "redis", "appendonly", bool, default=True),
    )


def _parse_local_model(r: _Reader, raw: dict[str, Any]) -> Endpoint:
    r.known_keys(raw, "local_model", {"listen"})
    return r.address(raw, "local_model", "listen")


def _parse_k8s(r: _Reader, raw: dict[str, Any]) -> K8s:
    r.known_keys(raw, "k8s", {"namespace", "image", "bind_host", "termination_grace_period_s"})
    ns = r.get(raw, "k8s", "namespace", str, default="tollway")
    if not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", ns):
        raise r.fail("k8s.namespace", ns, "must be a DNS label (lowercase letters, digits, '-')")
    return K8s(
        namespace=ns,
        image=r.get(raw, "k8s", "image", str, default="tollway:latest"),
        bind_host=r.get(raw, "k8s", "bind_host", str, default="0.0.0.0"),
        termination_grace_period_s=r.int_in(raw, "k8s", "termination_grace_period_s", 1, 3600, default=30),
    )


def _parse_observability(r: _Reader, raw: dict[str, Any]) -> Observability:
    k = "observability"
    r.known_keys(raw, k, {"prometheus", "metrics_port_offset", "scrape_interval_s"})
    default = Observability()
    prometheus = r.address(raw, k, "prometheus") if "prometheus" in raw else default.prometheus
    if not prometheus.is_loopback():
        raise r.fail(f"{k}.prometheus", prometheus.address, "must be a loopback address (its API is unauthenticated)")
    return Observability(
        prometheus=prometheus,
        metrics_port_offset=r.int_in(raw, k, "metrics_port_offset", -60000, 60000, default=default.metrics_port_offset),
        scrape_interval_s=r.int_in(raw, k, "scrape_interval_s", 1, 300, default=default.scrape_interval_s),
    )


def _parse_service(r: _Reader, raw: Any, k: str, host: str) -> Service:
    raw = r.mapping(raw, k)
    r.known_keys(raw, k, {
        "name", "protocol", "port", "replica_ports", "replicas", "grpc_services", "public", "public_paths",
        "canary", "enabled", "health_path", "calls",
    })
    name = r.get(raw, k, "name", str)
    if not _SERVICE_NAME.match(name):
        raise r.fail(f"{k}.name", name, "must be lowercase letters, digits and '_', starting with a letter")
    protocol = r.get(raw, k, "protocol", str, default="grpc")
    if protocol not in ("grpc", "http"):
        raise r.fail(f"{k}.protocol", protocol, "must be 'grpc' or 'http'")

    port = r.port(raw, k, "port")
    replicas = r.int_in(raw, k, "replicas", 1, 64, default=1)
    listed = r.get(raw, k, "replica_ports", list, default=None)
    if listed is None:
        ports = [port + i * REPLICA_PORT_STEP for i in range(replicas)]
        for i, p in enumerate(ports):
            if p > 65535:
                raise r.fail(f"{k}.replicas", replicas, f"replica {i} would listen on port {p} (> 65535)")
    else:
        if len(listed) != replicas:
            raise r.fail(f"{k}.replica_ports", listed, f"must list exactly {replicas} ports (one per replica)")
        for i, p in enumerate(listed):
            r.check_port(f"{k}.replica_ports[{i}]", p)
        if listed[0] != port:
            raise r.fail(f"{k}.replica_ports[0]", listed[0], f"must equal {k}.port ({port})")
        ports = list(listed)

    grpc_services = tuple(r.get(raw, k, "grpc_services", list, default=[]))
    if protocol == "grpc":
        if not grpc_services:
            raise r.fail(f"{k}.grpc_services", list(grpc_services), "a gRPC service must name its gRPC services")
        for i, g in enumerate(grpc_services):
            m = _GRPC_SERVICE.match(g) if isinstance(g, str) else None
            if not m or m.group("pkg") != name:
                raise r.fail(
                    f"{k}.grpc_services[{i}]", g,
                    f"must be a full name like tollway.{name}.v1.{_camel(name)}Service",
                )
    elif grpc_services:
        raise r.fail(f"{k}.grpc_services", list(grpc_services), "only a gRPC service may list gRPC services")

    public = r.get(raw, k, "public", bool, default=False)
    public_paths = tuple(r.get(raw, k, "public_paths", list, default=[]))
    if protocol == "http" and public and not public_paths:
        raise r.fail(f"{k}.public_paths", [], "a public HTTP service must list the path prefixes it serves")
    if protocol == "grpc" and public_paths:
        raise r.fail(
            f"{k}.public_paths", list(public_paths),
            "a gRPC service is exposed by its gRPC names and google.api.http annotations, not by paths",
        )
    for i, path in enumerate(public_paths):
        if not isinstance(path, str) or not re.match(r"^/[A-Za-z0-9._~/-]*[A-Za-z0-9._~-]$", path):
            raise r.fail(f"{k}.public_paths[{i}]", path, "must be an absolute path with no trailing '/'")
    if public_paths and not public:
        raise r.fail(f"{k}.public_paths", list(public_paths), "are only used when public is true")

    health_path = r.get(raw, k, "health_path", str, default=None)
    if health_path is not None and (protocol != "http" or not health_path.startswith("/")):
        raise r.fail(f"{k}.health_path", health_path, "is for HTTP services and must start with '/'")

    canary = None
    raw_canary = r.get(raw, k, "canary", dict, default=None)
    if raw_canary is not None:
        ck = f"{k}.canary"
        r.known_keys(raw_canary, ck, {"version", "port", "weight_percent"})
        version = r.get(raw_canary, ck, "version", str, default="canary")
        if not _VERSION.match(version) or version == "stable":
            raise r.fail(f"{ck}.version", version, "must be a DNS label other than 'stable' (e.g. v2)")
        canary = Canary(
            version=version,
            endpoint=Endpoint(host, r.port(raw_canary, ck, "port")),
            weight_percent=r.int_in(raw_canary, ck, "weight_percent", 0, 100),
        )

    return Service(
        name=name,
        protocol=protocol,  # type: ignore[arg-type]  # checked above
        grpc_services=grpc_services,
        public=public,
        public_paths=public_paths,
        endpoints=tuple(Endpoint(host, p) for p in ports),
        canary=canary,
        enabled=r.get(raw, k, "enabled", bool, default=True),
        health_path=health_path,
        calls=tuple(r.get(raw, k, "calls", list, default=[])),
    )


def _parse_processes(r: _Reader, raw: Mapping[str, Any], services: tuple[Service, ...]) -> tuple[ProcessGroup, ...]:
    by_name = {s.name: s for s in services}
    owner: dict[str, str] = {}
    groups = []
    for name, members in raw.items():
        k = f"processes.{name}"
        if not isinstance(name, str) or not _PROCESS_NAME.match(name):
            raise r.fail("processes", name, "must be lowercase letters, digits and '-', starting with a letter")
        if name in by_name:
            raise r.fail("processes", name, "is a service's name; name the process apart (e.g. core)")
        if not isinstance(members, list) or len(members) < 2:
            raise r.fail(k, members, "must list at least two services (a service alone needs no group)")
        for i, member in enumerate(members):
            service = by_name.get(member) if isinstance(member, str) else None
            if service is None:
                raise r.fail(f"{k}[{i}]", member, f"is not a service of this mesh ({', '.join(by_name)})")
            if member in owner:
                raise r.fail(f"{k}[{i}]", member, f"already runs in process {owner[member]!r}")
            owner[member] = name
        order = {s.name: i for i, s in enumerate(services)}
        groups.append(ProcessGroup(name=name, services=tuple(sorted(members, key=order.__getitem__))))
    return tuple(groups)


def _check_consistency(r: _Reader, mesh: Mesh) -> None:
    owners: dict[int, str] = {}
    for key, port in _port_users(mesh):
        if port in owners:
            raise r.fail(key, port, f"port is already used by {owners[port]}")
        owners[port] = key
    paths: dict[str, str] = {}
    for s in mesh.enabled_services:
        for p in s.public_paths:
            if p in paths:
                raise r.fail(f"services.{s.name}.public_paths", p, f"is already served by {paths[p]}")
            paths[p] = s.name
    by_name = {s.name: s for s in mesh.services}
    for s in mesh.enabled_services:
        for i, callee in enumerate(s.calls):
            key = f"services.{s.name}.calls[{i}]"
            target = by_name.get(callee) if isinstance(callee, str) else None
            if target is None:
                raise r.fail(key, callee, f"is not a service of this mesh ({', '.join(by_name)})")
            if target is s or target.protocol != "grpc" or not target.enabled:
                raise r.fail(key, callee, "must be another enabled gRPC service")
    if not any(s.public for s in mesh.enabled_services):
        raise MeshError(f"{r.source}: services: no enabled service is public; the edge would expose nothing")


def _port_users(mesh: Mesh) -> Iterator[tuple[str, int]]:
    yield "edge.listen", mesh.edge.listen.port
    yield "edge.admin", mesh.edge.admin.port
    yield "edge.mesh_listen", mesh.edge.mesh_listen.port
    yield "redis.port", mesh.redis.endpoint.port
    yield "local_model.listen", mesh.local_model.endpoint.port
    yield "observability.prometheus", mesh.observability.prometheus.port
    # Disabled services keep their ports reserved, so enabling one later cannot collide.
    for s in mesh.services:
        for i, e in enumerate(s.endpoints):
            yield (f"services.{s.name}.port" if i == 0 else f"services.{s.name} replica {i}"), e.port
        if s.canary:
            yield f"services.{s.name}.canary.port", s.canary.endpoint.port


# --------------------------------------------------------------------------------------------------
# Port overrides


def _apply_overrides(mesh: Mesh, ports: Mapping[str, int]) -> Mesh:
    if not ports:
        return mesh
    edge, redis, model, observability = mesh.edge, mesh.redis, mesh.local_model, mesh.observability
    services = {s.name: s for s in mesh.services}
    replica_sets: dict[str, dict[int, int]] = {}
    canary_ports: dict[str, int] = {}
    for key, port in ports.items():
        where = f"port override {key}={port!r}"
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise MeshError(f"{where}: not a port (1..65535)")
        if key == "edge":
            edge = dataclasses.replace(edge, listen=Endpoint(edge.listen.host, port))
        elif key == "admin":
            edge = dataclasses.replace(edge, admin=Endpoint(edge.admin.host, port))
        elif key == "mesh":
            edge = dataclasses.replace(edge, mesh_listen=Endpoint(edge.mesh_listen.host, port))
        elif key == "redis":
            redis = dataclasses.replace(redis, endpoint=Endpoint(redis.endpoint.host, port))
        elif key == "local_model":
            model = LocalModel(endpoint=Endpoint(model.endpoint.host, port))
        elif key == "prometheus":
            observability = dataclasses.replace(observability, prometheus=Endpoint(observability.prometheus.host, port))
        else:
            name, _, sub = key.partition(".")
            if name not in services:
                raise MeshError(
                    f"{where}: unknown name {key!r}; use edge, admin, mesh, redis, local_model, prometheus, "
                    f"<service>, <service>.<replica> or <service>.canary with a service among "
                    f"{', '.join(services)}"
                )
            s = services[name]
            if sub == "canary":
                if s.canary is None:
                    raise MeshError(f"{where}: service {name!r} has no canary in {mesh.source}")
                canary_ports[name] = port
            elif sub == "":
                replica_sets.setdefault(name, {})[0] = port
            elif sub.isdigit() and int(sub) < s.replicas:
                replica_sets.setdefault(name, {})[int(sub)] = port
            else:
                raise MeshError(f"{where}: {name!r} has replicas 0..{s.replicas - 1}; {sub!r} is not one")

    for name, overrides in replica_sets.items():
        s = services[name]
        base = overrides.get(0, s.port)
        # Replicas without their own override follow a moved first replica, keeping their offset.
        shift = base - s.port
        new_ports = [overrides.get(i, e.port + shift) for i, e in enumerate(s.endpoints)]
        for i, p in enumerate(new_ports):
            if not 1 <= p <= 65535:
                raise MeshError(f"port override {name}={base}: replica {i} would get port {p}; set {name}.{i} too")
        services[name] = dataclasses.replace(s, endpoints=tuple(Endpoint(e.host, p) for e, p in
                                                                zip(s.endpoints, new_ports, strict=True)))
    for name, port in canary_ports.items():
        s = services[name]
        assert s.canary is not None
        services[name] = dataclasses.replace(
            s, canary=dataclasses.replace(s.canary, endpoint=Endpoint(s.canary.endpoint.host, port))
        )
    out = dataclasses.replace(
        mesh,
        edge=edge,
        redis=redis,
        local_model=model,
        observability=observability,
        services=tuple(services[s.name] for s in mesh.services),
    )
    _check_consistency(_Reader(f"{mesh.source} (with port overrides)"), out)
    return out


# --------------------------------------------------------------------------------------------------
# Typed access with errors that name the key and the value


class _Reader(schema.Reader):
    """The shared reader plus mesh.yaml's own value types: ports and HOST:PORT addresses."""

    def __init__(self, source: str) -> None:
        super().__init__(source, MeshError)

    def int_in(self, raw: Mapping[str, Any], key: str, name: str, lo: int, hi: int, default: Any = REQUIRED) -> int:
        return self.get(raw, key, name, int, default, low=lo, high=hi)

    def check_port(self, full: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.fail(full, value, "is not a port (1..65535)")
        return value

    def port(self, raw: Mapping[str, Any], key: str, name: str) -> int:
        full = f"{key}.{name}"
        if raw.get(name) is None:
            raise self.fail_key(full, "required key is missing")
        return self.check_port(full, raw[name])

    def address(self, raw: Mapping[str, Any], key: str, name: str) -> Endpoint:
        full = f"{key}.{name}"
        value = self.get(raw, key, name, str)
        m = re.match(r"^(?:\[(?P<v6>[0-9a-fA-F:]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})$", value)
        if not m:
            raise self.fail(full, value, "must be HOST:PORT, e.g. 127.0.0.1:8080")
        port = int(m.group("port"))
        if not 1 <= port <= 65535:
            raise self.fail(full, value, "has a port outside 1..65535")
        return Endpoint(m.group("v6") or m.group("host"), port)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
