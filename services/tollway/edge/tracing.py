"""Envoy as the first hop of a trace: its OpenTelemetry tracer on every HTTP connection manager.

With tracing on, Envoy starts a trace for a request that arrives without a ``traceparent`` (or
continues the caller's), exports its own span to the same OTLP collector as the services, and
sends ``traceparent`` upstream, so the gateway's server span is the child of Envoy's. Applied to a
config that :func:`tollway.edge.envoy_config.build_envoy_config` made; with tracing off the config
stays as it was (no tracer, no per-request cost).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tollway.mesh.topology import Endpoint

COLLECTOR_CLUSTER = "otel_collector"
_HCM_FILTER = "envoy.filters.network.http_connection_manager"
_TYPE = "type.googleapis.com/"


class TracingConfigError(ValueError):
    """A TOLLWAY_OTEL_* value Envoy's tracer cannot use; the message names it."""


def collector_endpoint(value: str) -> Endpoint:
    """The OTLP/gRPC collector of ``TOLLWAY_OTEL_ENDPOINT`` (``host:port``, or ``http://host:port``).

    Raises:
        TracingConfigError: It is not HOST:PORT.
    """
    bare = value.removeprefix("http://").removeprefix("https://").rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TracingConfigError(
            f"Config 'TOLLWAY_OTEL_ENDPOINT' has value {value!r}. Use HOST:PORT of an OTLP/gRPC collector."
        )
    return Endpoint(host.strip("[]"), int(port))


def tracing_settings(env: Mapping[str, str]) -> tuple[Endpoint, float] | None:
    """The collector and sample ratio from the services' own settings, or None when spans are not
    exported with OTLP (``TOLLWAY_OTEL_EXPORTER`` other than ``otlp``).

    Raises:
        TracingConfigError: The endpoint or the ratio is malformed.
    """
    if env.get("TOLLWAY_OTEL_EXPORTER", "none") != "otlp":
        return None
    raw = env.get("TOLLWAY_OTEL_SAMPLE_RATIO", "1")
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise TracingConfigError(f"Config 'TOLLWAY_OTEL_SAMPLE_RATIO' has value {raw!r}. Use a number from 0 to 1.")
    return collector_endpoint(env.get("TOLLWAY_OTEL_ENDPOINT", "127.0.0.1:4317")), ratio


def with_tracing(
    config: dict[str, Any], collector: Endpoint, sample_ratio: float, service_name: str = "tollway-envoy"
) -> dict[str, Any]:
    """A copy of an Envoy bootstrap whose HTTP connection managers trace, exporting to ``collector``.

    Args:
        config: A bootstrap from ``build_envoy_config``.
        collector: The OTLP/gRPC collector.
        sample_ratio: The share of new traces kept (0..1); a request arriving with a sampled
            ``traceparent`` is traced whatever it is.
        service_name: The ``service.name`` of Envoy's spans.
    """
    out = copy.deepcopy(config)
    tracing = {
        "random_sampling": {"value": sample_ratio * 100},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _TYPE + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}, "timeout": "1s"},
                "service_name": service_name,
            },
        },
    }
    for listener in out["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                if f.get("name") == _HCM_FILTER:
                    f["typed_config"]["tracing"] = copy.deepcopy(tracing)
    out["static_resources"]["clusters"].append(
        {
            "name": COLLECTOR_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": COLLECTOR_CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": collector.host, "port_value": collector.port}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )
    return out
