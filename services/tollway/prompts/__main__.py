"""``python -m tollway.prompts``: the prompts service."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from tollway.mesh import redis as mesh_redis
from tollway.mesh.config import MeshConfig, load_config
from tollway.mesh.server import ServiceSpec, run, serve
from tollway.prompts.config import PromptsConfig
from tollway.prompts.files import load_prompt_dir
from tollway.prompts.prompts import Prompts, wall_clock_ms
from tollway.prompts.service import SERVICE_NAME, PromptsServicer
from tollway.prompts.store import PromptsStore
from tollway.prompts.v1 import prompts_pb2_grpc

log = logging.getLogger("tollway.prompts")


def build(
    cfg: PromptsConfig, mesh: MeshConfig | None = None, *, clock: Callable[[], int] = wall_clock_ms
) -> tuple[ServiceSpec, Prompts]:
    """The prompts service's ServiceSpec and domain object (tests and benches run it in-process).

    The seed folder is read here, so a malformed prompt file stops the service before it binds;
    it is published in ``on_start``, before health says SERVING.

    Raises:
        PromptFileError: A seed file is malformed.
    """
    mesh = mesh or load_config(MeshConfig)
    seed_files = load_prompt_dir(cfg.seed_dir) if cfg.seed_dir else []
    client = mesh_redis.connect(mesh.redis_url)
    prompts = Prompts(PromptsStore(client, cfg.key_prefix), cfg, clock=clock)

    def add(server: grpc.aio.Server) -> None:
        prompts_pb2_grpc.add_PromptsServiceServicer_to_server(PromptsServicer(prompts), server)

    async def start() -> None:
        await mesh_redis.wait_ready(client)
        for line in await prompts.seed(seed_files, cfg.seed_actor):
            log.info("seed: %s", line)

    async def stop() -> None:
        await client.aclose()

    spec = ServiceSpec(
        name="prompts",
        port=cfg.port,
        add_servicers=add,
        service_names=[SERVICE_NAME],
        on_start=start,
        on_stop=stop,
        metrics_port=cfg.metrics_port,
        mesh=mesh,
    )
    return spec, prompts


def main() -> None:
    spec, _ = build(load_config(PromptsConfig, "prompts"))
    run(serve(spec))


if __name__ == "__main__":
    main()
