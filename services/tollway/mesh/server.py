"""``serve()``: how every Tollway service runs; ``serve_group()``: several in one process.

One grpc.aio server with the standard health service (SERVING only once the
service's ``on_start`` hook has finished, i.e. its Redis and models are ready),
reflection, an OpenTelemetry server interceptor (when spans are exported), a Prometheus
endpoint, JSON logs,
and a graceful shutdown on SIGTERM/SIGINT that lets in-flight streams finish.

``serve_group()`` runs several services that ``deploy/mesh.yaml`` co-locates (``processes:``) on one
event loop: each keeps its own server, port and health, and their servicers are also registered in
the process's :mod:`tollway.mesh.inprocess` registry, so that a caller given ``inproc:<service>``
calls them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from prometheus_client import start_http_server

from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.inprocess import Registry, process_registry
from tollway.mesh.telemetry import setup_logging, tracer_provider, tracing_enabled

log = logging.getLogger("tollway.server")

_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


@dataclasses.dataclass
class ServiceSpec:
    """What a service tells :func:`serve` about itself.

    Attributes:
        name: Short name (``gateway``); used in logs, metrics and span resources.
        port: The gRPC port; 0 picks a free one.
        add_servicers: Registers the service's servicers on the server.
        service_names: Full proto names of the services registered (for health and reflection).
        on_start: Awaited after the port is bound and before health says SERVING.
        on_stop: Awaited after the server stopped (close pools, flush).
        metrics_port: Prometheus endpoint port; 0 turns it off.
        host: The interface to bind; defaults to the mesh's ``bind_host``.
    """

    name: str
    port: int
    add_servicers: Callable[[grpc.aio.Server], None]
    service_names: Sequence[str]
    on_start: Callable[[], Awaitable[None]] | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None
    metrics_port: int = 0
    host: str = ""
    mesh: MeshConfig = dataclasses.field(default_factory=lambda: load_config(MeshConfig))


async def create_server(
    spec: ServiceSpec, address: str | None = None, registry: Registry | None = None
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Builds and starts the server, runs ``on_start``, and reports SERVING.

    Args:
        spec: The service.
        address: Where to listen; the spec's host and port by default.
        registry: When given, the servicers (health included) are also registered there under
            ``spec.name`` for in-process calls (:mod:`tollway.mesh.inprocess`).

    Returns:
        The started server, the port it bound, and its health servicer.

    Raises:
        OSError: The port is taken; the message names it.
    """
    server, health_servicer = _build_server(spec, registry)
    port = await _start_server(spec, server, health_servicer, address)
    return server, port, health_servicer


def _build_server(spec: ServiceSpec, registry: Registry | None) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The server with the service's servicers, health and reflection; not bound, not started."""
    # A span costs ~0.1 ms per streamed message: spans are made only when they are exported.
    interceptors = []
    if tracing_enabled(spec.mesh):
        interceptors.append(aio_server_interceptor(tracer_provider=tracer_provider(spec.name, spec.mesh)))
    server = grpc.aio.server(interceptors=interceptors, options=_SERVER_OPTIONS)
    target = registry.recorder(spec.name, server) if registry is not None else server
    spec.add_servicers(target)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, target)
    reflection.enable_server_reflection([*spec.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, health_servicer


async def _start_server(
    spec: ServiceSpec, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, address: str | None
) -> int:
    for name in ("", *spec.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    address = address or f"{spec.host or spec.mesh.bind_host}:{spec.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"{spec.name}: cannot listen on {address} (is the port already taken?)") from exc
    await server.start()
    if spec.on_start is not None:
        await spec.on_start()
    for name in ("", *spec.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return port


class Companion(Protocol):
    """Something else a process serves on its event loop beside its gRPC servers (for example
    the OpenAI HTTP surface, co-located with the gateway it calls)."""

    name: str

    async def start(self) -> None:
        """Starts serving; returns once it does.

        Raises:
            OSError: It could not start (its port is taken...).
        """

    async def stop(self, grace_s: float) -> None:
        """Stops taking work and lets what is in flight finish within ``grace_s``."""


async def serve(spec: ServiceSpec) -> None:
    """Runs the service until SIGTERM or SIGINT, then drains and stops.

    Safe to call once per process. On a signal, health turns NOT_SERVING first and stays
    so for ``shutdown_drain_delay_s`` while new RPCs are still served (so balancers stop
    sending); then new RPCs are refused and those in flight get ``shutdown_grace_s`` to
    finish.
    """
    await serve_group(spec.name, [spec], registry=None)


async def serve_group(
    name: str,
    specs: Sequence[ServiceSpec],
    companions: Sequence[Companion] = (),
    registry: Registry | None = None,
) -> None:
    """Runs several services in this process until SIGTERM or SIGINT, then drains and stops.

    Every servicer is added (and registered in-process) before any server starts, so that a
    service's ``on_start`` may already call a co-located one. Servers then start in the order
    given (callees first), and the companions after them. On a signal, every health turns
    NOT_SERVING, the companions stop (they are the outermost callers), and after the drain delay
    all servers stop together, each giving its calls in flight ``shutdown_grace_s``: a co-located
    callee stays registered until every server has stopped, so calls in flight finish. Then the
    ``on_stop`` hooks run in reverse order.

    Args:
        name: The process's name in logs (the service's, or the mesh.yaml process group's).
        specs: The services, callees before callers.
        companions: Other servers on the same loop (an HTTP surface), started last, stopped first.
        registry: Where servicers are registered for in-process calls; by default the process's
            own when there is more than one service or a companion, none otherwise.
    """
    mesh = specs[0].mesh
    if registry is None and (len(specs) > 1 or companions):
        registry = process_registry()
    setup_logging(name, mesh)
    if tracing_enabled(mesh):
        # Named after the process (`core` for a group): its members' spans all come from it.
        tracer_provider(name, mesh)
    for spec in specs:
        if spec.metrics_port:
            start_http_server(spec.metrics_port, addr=spec.mesh.metrics_host)
    built = [(spec, *_build_server(spec, registry)) for spec in specs]
    running: list[tuple[ServiceSpec, grpc.aio.Server, health.aio.HealthServicer]] = []
    started: list[Companion] = []
    waiters: set[asyncio.Future[Any]] = set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for spec, server, health_servicer in built:
            port = await _start_server(spec, server, health_servicer, None)
            running.append((spec, server, health_servicer))
            log.info("serving", extra={"service": spec.name, "port": port, "metrics_port": spec.metrics_port})
        for companion in companions:
            await companion.start()
            started.append(companion)
        # What start-up built (modules, catalogs, models, indexes: ~90k objects in the core group)
        # lives as long as the process: frozen out of the cyclic collector's reach, each full
        # collection then walks only what requests made since (it was ~30 us a request).
        gc.collect()
        gc.freeze()
        gc.set_threshold(mesh.gc_young_threshold, *gc.get_threshold()[1:])
        waiters = {asyncio.ensure_future(server.wait_for_termination()) for _, server, _ in running}
        waiters.add(asyncio.ensure_future(stop.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down", extra={"grace_s": mesh.shutdown_grace_s})
        for _, _, health_servicer in running:
            await health_servicer.enter_graceful_shutdown()
        for companion in reversed(started):
            await companion.stop(mesh.shutdown_grace_s)
        started.clear()
        if mesh.shutdown_drain_delay_s > 0:
            await asyncio.sleep(mesh.shutdown_drain_delay_s)
    finally:
        for companion in reversed(started):
            await companion.stop(0)
        await asyncio.gather(*(server.stop(spec.mesh.shutdown_grace_s) for spec, server, _ in running))
        # Only now: a wait_for_termination() cancelled before its server stopped would cancel the
        # server's own shutdown future (grpc awaits it unshielded).
        for task in waiters:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if registry is not None:
            for spec, _, _ in running:
                registry.remove(spec.name)
        for spec, _, _ in reversed(running):
            if spec.on_stop is not None:
                await spec.on_stop()
    log.info("stopped")


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs a service's main coroutine on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(main)
        return
    uvloop.run(main)
