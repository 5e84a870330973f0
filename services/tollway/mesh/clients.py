"""The one way services open gRPC channels to each other."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import TracerProvider

from tollway.mesh.inprocess import InProcessChannel, is_inprocess

_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

# How soon a channel tries again to connect to a peer it lost. gRPC's defaults (1 s, then x1.6 up
# to 120 s) leave a channel waiting seconds after its peer is back: a service restarted by the
# supervisor in 1-5 s was still refused for up to 4 s more by its callers' channels, which fail
# calls at once while they wait. On a mesh a connect attempt is one local SYN, so retrying every
# 100 ms rising to 1 s costs nothing and bounds that lag by about 1 s. (The time one attempt
# may take, grpc.min_reconnect_backoff_ms, keeps its 20 s default: a slow network is not a dead peer.)
_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


def _retry_config(idempotent_services: Sequence[str]) -> str:
    # Only idempotent calls may be retried by the channel: a retried Generate could bill twice.
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": s} for s in idempotent_services],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def channel(
    target: str,
    *,
    idempotent_services: Sequence[str] = (),
    tracer_provider: TracerProvider | None = None,
) -> grpc.aio.Channel:
    """Opens a long-lived channel to ``target`` (``host:port``, or ``inproc:<service>``).

    Args:
        target: The peer address; a service's own port, the mesh listener of Envoy, or
            ``inproc:<service>`` for a service co-located in this process (mesh.yaml's
            ``processes``): then the channel calls its servicer directly
            (:mod:`tollway.mesh.inprocess`), with no socket and no serialisation, and the channel
            options (retries, keepalive) do not apply, there being no connection to lose.
        idempotent_services: Full service names whose every method may be retried on
            UNAVAILABLE by the channel itself.
        tracer_provider: When given, each call gets a client span and carries the trace.
    """
    if is_inprocess(target):
        return InProcessChannel(target.removeprefix("inproc:"), tracer_provider=tracer_provider)  # type: ignore[return-value]
    options = [*_KEEPALIVE, *_RECONNECT]
    if idempotent_services:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", _retry_config(idempotent_services))]
    interceptors = aio_client_interceptors(tracer_provider=tracer_provider) if tracer_provider else None
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
