"""``tollway cache purge``: removes cache entries through a running cache service.

It calls ``CacheService.Invalidate``, so every replica stops serving the removed entries
(a direct Redis delete would leave other replicas' indexes to find out on their own).

Wiring it into a CLI::

    sub = subparsers.add_parser("purge", help="remove cache entries")
    tollway.cache.purge.add_arguments(sub)
    sub.set_defaults(func=tollway.cache.purge.run)     # run(args) -> exit code
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc

from tollway.cache.v1 import cache_pb2, cache_pb2_grpc
from tollway.mesh import clients
from tollway.mesh.errors import TollwayError, from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50052"


def _request(
    document_ids: Sequence[str], prompt_template: str, prompt_version: str, namespace: str, everything: bool
) -> cache_pb2.InvalidateRequest:
    given = [
        flag
        for flag, present in (
            ("--doc", bool(document_ids)),
            ("--template", bool(prompt_template)),
            ("--namespace", bool(namespace)),
            ("--all", everything),
        )
        if present
    ]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of --doc, --template, --namespace or --all (got {', '.join(given) or 'none'})"
        )
    if prompt_version and not prompt_template:
        raise ValueError("--version needs --template")
    return cache_pb2.InvalidateRequest(
        document_ids=list(document_ids),
        prompt_template=prompt_template,
        prompt_version=prompt_version,
        namespace=namespace,
        all=everything,
    )


async def purge_async(
    target: str = DEFAULT_TARGET,
    *,
    document_ids: Sequence[str] = (),
    prompt_template: str = "",
    prompt_version: str = "",
    namespace: str = "",
    everything: bool = False,
    timeout_s: float = 30.0,
) -> int:
    """Removes the entries one target names and returns how many were removed.

    Exactly one of ``document_ids``, ``prompt_template`` (optionally with
    ``prompt_version``), ``namespace`` or ``everything`` must be given. Idempotent.

    Args:
        target: The cache service (or the mesh's Envoy listener), ``host:port``.
        document_ids: Remove entries grounded by any of these documents.
        prompt_template: Remove entries rendered from this template.
        prompt_version: With ``prompt_template``: only this version.
        namespace: Remove every entry of this namespace.
        everything: Remove every entry.
        timeout_s: Deadline of the call.

    Raises:
        ValueError: Not exactly one target was given.
        TollwayError: The service refused or could not be reached (e.g. Unavailable).
    """
    request = _request(document_ids, prompt_template, prompt_version, namespace, everything)
    async with clients.channel(target) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        try:
            response = await stub.Invalidate(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
    return int(response.removed_count)


def purge(target: str = DEFAULT_TARGET, **kwargs: object) -> int:
    """Synchronous :func:`purge_async` (same arguments, same errors)."""
    return asyncio.run(purge_async(target, **kwargs))  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the purge options to an argparse (sub)parser."""
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"cache service host:port (default {DEFAULT_TARGET})")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--doc", action="append", default=[], metavar="ID", help="a grounding document id (repeatable)")
    which.add_argument("--template", default="", help="a prompt template name")
    which.add_argument("--namespace", default="", help="a cache namespace")
    which.add_argument("--all", action="store_true", help="every entry of every namespace")
    parser.add_argument("--version", default="", help="with --template: only this template version")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the service")


def run(args: argparse.Namespace) -> int:
    """Runs a purge from parsed arguments; prints the outcome. Returns the exit code."""
    try:
        removed = purge(
            args.target,
            document_ids=args.doc,
            prompt_template=args.template,
            prompt_version=args.version,
            namespace=args.namespace,
            everything=args.all,
            timeout_s=args.timeout,
        )
    except ValueError as exc:
        print(f"tollway cache purge: {exc}", file=sys.stderr)
        return 2
    except TollwayError as exc:
        print(f"tollway cache purge: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")
    return 0
