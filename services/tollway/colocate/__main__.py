"""``python -m tollway.colocate PROCESS SERVICE...``: the services of one mesh.yaml process group.

Each service is built exactly as its own ``python -m tollway.<service>`` builds it (its ``build()``
and its ``TOLLWAY_<SERVICE>_*`` config), then all run on one event loop
(:func:`tollway.mesh.server.serve_group`): each keeps its port, health and reflection, so Envoy,
probes and other processes reach it as before, and its servicers are registered for in-process
calls. The launcher gives a member that calls another member the address ``inproc:<callee>``, so
that call goes through :mod:`tollway.mesh.inprocess` instead of a socket. The HTTP surface
(openai_compat) runs its unchanged Starlette app on the same loop, under uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

import uvicorn

from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.httpserver import HeadWithBodyProtocol
from tollway.mesh.server import Companion, ServiceSpec, run, serve_group
from tollway.mesh.telemetry import tracer_provider, tracing_enabled

# A service's spec and what SIGHUP should reload in it (None: nothing).
Built = tuple[ServiceSpec, Callable[[], None] | None]


def _gateway(mesh: MeshConfig) -> Built:
    from tollway.gateway.__main__ import build
    from tollway.gateway.config import GatewayConfig

    return build(load_config(GatewayConfig, "gateway"), mesh), None


def _router(mesh: MeshConfig) -> Built:
    from tollway.router.__main__ import build
    from tollway.router.config import RouterConfig

    return build(load_config(RouterConfig, "router"), mesh)[0], None


def _cache(mesh: MeshConfig) -> Built:
    from tollway.cache.__main__ import build
    from tollway.cache.config import CacheConfig

    # SIGHUP is the process's, not one service's: the group installs one handler for all reloads.
    spec, cache = build(load_config(CacheConfig, "cache"), mesh, handle_sighup=False)
    return spec, cache.namespaces.reload


def _budget(mesh: MeshConfig) -> Built:
    from tollway.budget.__main__ import build
    from tollway.budget.config import BudgetConfig

    spec, budget = build(load_config(BudgetConfig, "budget"), mesh, handle_sighup=False)
    return spec, budget.reload_plans


def _embedding(mesh: MeshConfig) -> Built:
    from tollway.embedding.__main__ import build
    from tollway.embedding.config import EmbeddingConfig

    return build(load_config(EmbeddingConfig, "embedding"), mesh)[0], None


def _prompts(mesh: MeshConfig) -> Built:
    from tollway.prompts.__main__ import build
    from tollway.prompts.config import PromptsConfig

    return build(load_config(PromptsConfig, "prompts"), mesh)[0], None


def _retrieval(mesh: MeshConfig) -> Built:
    from tollway.retrieval.__main__ import build
    from tollway.retrieval.config import RetrievalConfig

    return build(load_config(RetrievalConfig, "retrieval"), mesh)[0], None


GRPC_BUILDERS: dict[str, Callable[[MeshConfig], Built]] = {
    "gateway": _gateway,
    "router": _router,
    "cache": _cache,
    "budget": _budget,
    "embedding": _embedding,
    "prompts": _prompts,
    "retrieval": _retrieval,
}
HTTP_SERVICES = ("openai_compat",)
# Above Envoy's upstream idle timeout (tollway.edge.envoy_config.UPSTREAM_IDLE_TIMEOUT_S, 60 s):
# Envoy, not this server, closes an idle connection, so it never sends a request on one this
# server is closing (uvicorn's default of 5 s made that race a 503 under bursts; issue 13).
KEEP_ALIVE_S = 75
# Callees before callers: a caller's on_start may already call a member (none does today, but the
# order also makes shutdown's reverse order callers-first).
_ORDER = ("embedding", "cache", "prompts", "budget", "router", "retrieval", "gateway")


class Uvicorn:
    """An ASGI app served by uvicorn on the group's event loop (a :class:`Companion`).

    uvicorn's ``Server.serve()`` would take over SIGTERM and SIGINT; the group owns them, so this
    drives ``_serve`` (startup, main loop, shutdown) in a task and asks it to exit on ``stop``.
    """

    def __init__(self, name: str, app: Any, host: str, port: int) -> None:
        self.name = name
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=HeadWithBodyProtocol,
            access_log=False,
            log_config=None,
            lifespan="on",
            # Nothing reads the client's address (Envoy's X-Forwarded-For): no middleware to rewrite it.
            proxy_headers=False,
            timeout_graceful_shutdown=10,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self.server = uvicorn.Server(self.config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self.server._serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"{self.name}: the HTTP server stopped while starting (see the log above)")
            await asyncio.sleep(0.01)

    async def stop(self, grace_s: float) -> None:
        if self._task is None:
            return
        self.config.timeout_graceful_shutdown = max(grace_s, 0.1)
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _openai_compat(mesh: MeshConfig) -> Companion:
    from tollway.mesh.tracing import TraceContextMiddleware
    from tollway.openai_compat.config import OpenAICompatConfig
    from tollway.openai_compat.dispatch import Dispatch
    from tollway.openai_compat.service import OpenAICompatApp

    cfg = load_config(OpenAICompatConfig, "openai_compat")
    # The same app as `python -m tollway.openai_compat`; its gateway address is `inproc:gateway`
    # when the gateway is a member, so its calls go through the in-process channel.
    app = TraceContextMiddleware(
        Dispatch(OpenAICompatApp(cfg.gateway_addr, cfg.max_body_bytes, cfg.jobs_addr)), "openai_compat"
    )
    return Uvicorn("openai_compat", app, cfg.host or mesh.bind_host, cfg.port)


class _Reloads:
    """The group's SIGHUP handler: every member's reload (cache namespaces, budget plans)."""

    name = "sighup"

    def __init__(self, reloads: list[Callable[[], None]]) -> None:
        self.reloads = reloads

    def _reload(self) -> None:
        for reload in self.reloads:
            reload()

    async def start(self) -> None:
        if self.reloads:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload)

    async def stop(self, grace_s: float) -> None:
        if self.reloads:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


async def main_async(process: str, services: list[str]) -> None:
    """Builds every member and serves them all until SIGTERM or SIGINT.

    Raises:
        SystemExit: A service is unknown (the message lists the known ones).
    """
    unknown = [s for s in services if s not in GRPC_BUILDERS and s not in HTTP_SERVICES]
    if unknown:
        known = ", ".join([*GRPC_BUILDERS, *HTTP_SERVICES])
        raise SystemExit(f"tollway.colocate {process}: unknown service(s) {', '.join(unknown)}; known: {known}")
    if "budget" in services and "gateway" in services:
        # The gateway settles every hold with its own in-process budget, the one that admitted
        # it: the budget may admit from leases (tollway.budget.leases). Apart, settlements may
        # reach another budget replica, so leases stay off unless configured (or the launcher
        # knows the budget runs alone: tollway.launcher.stack).
        from tollway.budget.config import LEASE_REQUESTS_ONE_PROCESS

        os.environ.setdefault("TOLLWAY_BUDGET_LEASE_REQUESTS", str(LEASE_REQUESTS_ONE_PROCESS))
    mesh = load_config(MeshConfig)
    if tracing_enabled(mesh):
        # Before the members' builders (which ask for it too): the spans are the process's (`core`).
        tracer_provider(process, mesh)
    rank = {name: i for i, name in enumerate(_ORDER)}
    specs, reloads = [], []
    for name in sorted((s for s in services if s in GRPC_BUILDERS), key=lambda s: rank.get(s, len(rank))):
        spec, reload = GRPC_BUILDERS[name](mesh)
        specs.append(spec)
        if reload is not None:
            reloads.append(reload)
    companions: list[Companion] = [_Reloads(reloads)]
    if "openai_compat" in services:
        companions.append(_openai_compat(mesh))
    await serve_group(process, specs, companions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("process", help="the process group's name (mesh.yaml processes)")
    parser.add_argument("services", nargs="+", help="its services")
    args = parser.parse_args()
    run(main_async(args.process, args.services))


if __name__ == "__main__":
    main()
