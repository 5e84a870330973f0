"""``python -m tollway.budget``: the budget service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import grpc

from tollway.budget.budget import Budget, wall_clock_ms
from tollway.budget.config import BudgetConfig
from tollway.budget.plans import PlansSource
from tollway.budget.service import SERVICE_NAME, BudgetServicer
from tollway.budget.store import BudgetStore
from tollway.budget.v1 import budget_pb2_grpc
from tollway.common.catalog import CatalogSource
from tollway.mesh import redis as mesh_redis
from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.server import ServiceSpec, run, serve

log = logging.getLogger("tollway.budget")


def build(
    cfg: BudgetConfig,
    mesh: MeshConfig | None = None,
    *,
    clock: Callable[[], int] = wall_clock_ms,
    handle_sighup: bool = False,
) -> tuple[ServiceSpec, Budget]:
    """The budget's ServiceSpec and domain object (tests and benches run it in-process).

    Health turns SERVING only after ``on_start``: Redis answered and the overrides are loaded.

    Raises:
        PlansError: The plans file is missing or malformed.
        CatalogError: The model catalog is missing or malformed.
    """
    mesh = mesh or load_config(MeshConfig)
    plans = PlansSource(cfg.plans)
    catalog = CatalogSource(cfg.catalog)
    client = mesh_redis.connect(mesh.redis_url)
    store = BudgetStore(
        client,
        prefix=cfg.key_prefix,
        record_ttl_s=cfg.record_ttl_s,
        usage_ttl_s=cfg.usage_retention_days * 86400,
    )
    budget = Budget(store, plans, catalog, cfg, clock=clock)

    def add(server: grpc.aio.Server) -> None:
        budget_pb2_grpc.add_BudgetServiceServicer_to_server(BudgetServicer(budget), server)

    async def start() -> None:
        await mesh_redis.wait_ready(client)
        await budget.start()
        if handle_sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, budget.reload_plans)

    async def stop() -> None:
        if handle_sighup:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await budget.stop()
        await client.aclose()

    spec = ServiceSpec(
        name="budget",
        port=cfg.port,
        add_servicers=add,
        service_names=[SERVICE_NAME],
        on_start=start,
        on_stop=stop,
        metrics_port=cfg.metrics_port,
        mesh=mesh,
    )
    return spec, budget


def main() -> None:
    spec, _ = build(load_config(BudgetConfig, "budget"), handle_sighup=True)
    run(serve(spec))


if __name__ == "__main__":
    main()
