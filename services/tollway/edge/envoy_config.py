"""Builds the Envoy bootstrap (static config) for a mesh topology.

Two listeners:

- the public edge (`edge.listen`, codec AUTO): HTTP/1.1 JSON and Server-Sent Events transcoded to
  the public gRPC services, gRPC-Web, native h2c gRPC, and the public HTTP services
  (openai_compat) passed through untouched;
- the internal mesh listener (`edge.mesh_listen`, h2c only): gRPC routed by service path prefix to
  every enabled gRPC service, with the same canary split, so callers need one address whatever
  the number of replicas.

Public HTTP filter chain, in order: cors -> header_mutation -> buffer -> grpc_web ->
grpc_json_transcoder -> router. Why each one sits where it does:

- cors first, so preflights are answered before anything else looks at them;
- header_mutation ahead of the transcoder, so on the way back it sees the *transcoded* response
  and can drop `grpc-status`/`grpc-message` from JSON answers. It takes its per-route config
  from the route matched before transcoding (`json_api`), so native gRPC keeps its headers.
  Route-level `response_headers_to_remove` runs before the transcoder instead: observed, it
  misses the headers the transcoder adds from the trailers, and it hides the status of a
  trailers-only error (HTTP 200 with an empty application/grpc body instead of 429 + JSON);
- buffer enforces `max_request_body_bytes` on every public request (413); no RPC of Tollway
  streams its request, so buffering the request costs nothing in streaming behaviour;
- the transcoder after grpc_web, so gRPC-Web requests arrive as plain gRPC and pass through it.

After transcoding, the transcoder clears the route cache and the request is routed again on its
gRPC path (`/tollway.gateway.v1.GatewayService/Generate`), so JSON, gRPC-Web and gRPC share the
service routes and their canary split.

Canaries started while Envoy runs (`tollway canary`, `DynamicCanaries`): a service named there gets
a canary cluster `<name>_canary` whose endpoints come from a file (EDS from the filesystem), and two
routes ahead of its stable one whose share comes from Envoy's runtime, read from a directory the
launcher swaps atomically (`tollway.launcher.canary_envoy`): `tollway.canary.<name>.weight_percent`
(0..100) and `tollway.canary.<name>.forced` (100 while a canary runs: `x-canary: 1` reaches it).
Changing either file changes routing for the next request, with no restart of Envoy and no
connection closed: nothing in flight is dropped (measured in docs/benchmarks.md, issue 20).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tollway.edge.console import MAX_BODY_BYTES as MAX_CONSOLE_FILE_BYTES
from tollway.edge.console import WEB_ROOT, console_routes
from tollway.mesh.topology import Endpoint, Mesh, Service

__all__ = [
    "CANARY_HEADER",
    "DynamicCanaries",
    "build_envoy_config",
    "canary_runtime_keys",
    "cluster_name",
    "dynamic_canary_cluster",
]

CANARY_HEADER = "x-canary"

_TYPE = "type.googleapis.com/"
_HCM = _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = _TYPE + "envoy.extensions.filters.http.router.v3.Router"
_FILTER_CONFIG = _TYPE + "envoy.config.route.v3.FilterConfig"
_HTTP_OPTIONS = _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Names of the HTTP filters (also the keys of per-route configs).
CORS = "envoy.filters.http.cors"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
BUFFER = "envoy.filters.http.buffer"
GRPC_WEB = "envoy.filters.http.grpc_web"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
ROUTER = "envoy.filters.http.router"
TRAILER_HEADERS = "envoy.filters.http.lua"

# Request headers a browser may send (CORS). grpc-web clients send x-grpc-web and x-user-agent.
_CORS_ALLOW_HEADERS = (
    "authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout, x-canary, x-request-id, "
    "traceparent, tracestate"
)
_CORS_EXPOSE_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin, retry-after, x-request-id"

# Envoy closes an upstream connection idle this long, before the service's own keep-alive can:
# a server that closes an idle connection races Envoy reusing it, and a request Envoy has just
# sent on it fails as a 503 "reset before headers ... connection termination" (issue 13: 47 of
# 200 on the OpenAI surface after 3 s idle under load). Not retried: the request may have
# reached the service. The HTTP services' keep-alive (uvicorn's timeout_keep_alive, 75 s, in
# openai_compat and colocate) stays above this; tests/unit/test_edge_keepalive.py holds that.
UPSTREAM_IDLE_TIMEOUT_S = 60

# Retried only when the request provably never reached a service, so even non-idempotent calls
# (Generate, which reserves budget) are safe to retry on another replica.
_RETRY_POLICY = {
    "retry_on": "connect-failure,refused-stream,reset-before-request",
    "num_retries": 2,
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
        },
    }],
    "host_selection_retry_max_attempts": 3,
}

# gRPC code for a message over a size limit (gRPC itself uses it for "message larger than max").
_GRPC_RESOURCE_EXHAUSTED = 8
_GRPC_INVALID_ARGUMENT = 3
_GRPC_NOT_FOUND = 5


@dataclasses.dataclass(frozen=True)
class DynamicCanaries:
    """Services whose canary can be started, weighted and stopped while Envoy runs.

    Attributes:
        services: Their names. A service whose canary mesh.yaml declares keeps that static one.
        eds_dir: Holds `<name>_canary.yaml`, each a DiscoveryResponse with the canary's endpoints.
        runtime_root: A symlink to the current runtime directory (replaced atomically to change it).
    """

    services: frozenset[str]
    eds_dir: Path
    runtime_root: Path


def dynamic_canary_cluster(service: str) -> str:
    """The name of the canary cluster `DynamicCanaries` gives a service."""
    return f"{service}_canary"


def canary_runtime_keys(service: str) -> tuple[str, str]:
    """The runtime keys of a dynamic canary: its share of requests (percent) and whether x-canary reaches it."""
    return f"tollway.canary.{service}.weight_percent", f"tollway.canary.{service}.forced"


# Finer than Envoy's default buckets (0.5, 1, 5, 10, 25, 50, 100 ms, ...), so that `tollway canary
# status` can put the canary's and the stable version's latency side by side.
_RQ_TIME_BUCKETS_MS = (
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 750,
    1000, 2000, 5000, 10000, 30000, 60000, 300000,
)


def cluster_name(service: Service, canary: bool = False) -> str:
    """Names the Envoy cluster of a service's stable instances or of its canary."""
    if canary:
        assert service.canary is not None
        return f"{service.name}_{service.canary.version.replace('-', '_')}"
    return service.name


def build_envoy_config(
    mesh: Mesh, dynamic: DynamicCanaries | None = None, *, console_root: Path | None = WEB_ROOT
) -> dict[str, Any]:
    """Builds the Envoy bootstrap for `mesh` as plain data (dump it with yaml.safe_dump).

    The descriptor set path is written as given by the topology (absolute); Envoy reads it at
    startup, so it must exist by then (`make protos`).

    Args:
        mesh: The validated topology.
        dynamic: Services whose canaries are started while Envoy runs (`tollway canary`); None
            for a static config (build/envoy.yaml, k8s).
        console_root: The browser console's files, served under `/ui/` (`tollway.edge.console`);
            None serves no console (k8s: the files are not in Envoy's pod).

    Returns:
        A dict that parses into envoy.config.bootstrap.v3.Bootstrap.
    """
    services = mesh.enabled_services
    listeners = [_public_listener(mesh, dynamic, console_root)]
    if any(s.protocol == "grpc" for s in services):
        listeners.append(_mesh_listener(mesh, dynamic))
    clusters = []
    for s in services:
        clusters.append(_cluster(mesh, s, cluster_name(s), s.endpoints))
        if s.canary:
            clusters.append(_cluster(mesh, s, cluster_name(s, canary=True), (s.canary.endpoint,)))
        elif _is_dynamic(s, dynamic):
            assert dynamic is not None
            clusters.append(_eds_cluster(mesh, s, dynamic))
    extra: dict[str, Any] = {}
    if dynamic is not None and dynamic.services:
        extra = {
            # Configuration from files (EDS here) is refused without a node identity.
            "node": {"id": "tollway-edge", "cluster": "tollway"},
            "layered_runtime": {"layers": [{
                "name": "canaries",
                "disk_layer": {"symlink_root": str(dynamic.runtime_root), "subdirectory": "envoy"},
            }]},
            # Histograms reach the admin's /stats only when flushed; canary status wants them fresh.
            "stats_flush_interval": "1s",
            "stats_config": {"histogram_bucket_settings": [{
                "match": {"suffix": "upstream_rq_time"}, "buckets": list(_RQ_TIME_BUCKETS_MS),
            }]},
        }
    return {
        **extra,
        "admin": {"address": _socket(mesh.edge.admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        # Without a global cap Envoy warns at startup and an edge can be flooded with connections.
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.resource_monitors.downstream_connections.v3."
                    "DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 50000,
                },
            }],
        },
    }


# --------------------------------------------------------------------------------------------------
# Listeners


def _public_listener(mesh: Mesh, dynamic: DynamicCanaries | None, console_root: Path | None) -> dict[str, Any]:
    edge = mesh.edge
    public = [s for s in mesh.enabled_services if s.public]
    public_grpc = [s for s in public if s.protocol == "grpc"]
    public_http = [s for s in public if s.protocol == "http"]

    # The console first: its paths are no API's (the transcoder is off for them).
    routes: list[dict[str, Any]] = console_routes(_not_json_api(), console_root) if console_root else []
    for s in public_http:
        for path in s.public_paths:
            # The transcoder would answer 404 for paths it cannot map; these are not its business.
            routes += _service_routes(
                s, {"path_separated_prefix": path}, timeout_zero=True,
                per_filter=_not_json_api(), dynamic=dynamic,
            )
    for s in public_grpc:
        for prefix in s.grpc_path_prefixes:
            routes += _service_routes(s, {"prefix": prefix}, timeout_zero=True, dynamic=dynamic)
    # gRPC (and gRPC-Web) for a service that is not public: answered here, never forwarded.
    routes.append({
        "name": "grpc_not_public",
        "match": {"prefix": "/", "headers": [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}]},
        "direct_response": {"status": 404, "body": {"inline_string": "no such public gRPC service"}},
    })
    routes.append(_json_api_route(public_grpc))

    vhost: dict[str, Any] = {"name": "public", "domains": ["*"], "routes": routes}
    if edge.cors_origins:
        vhost["typed_per_filter_config"] = {CORS: _cors_policy(mesh)}

    filters: list[dict[str, Any]] = []
    if edge.cors_origins:
        filters.append(_http_filter(CORS, "envoy.extensions.filters.http.cors.v3.Cors"))
    if public_grpc:
        # Does nothing unless a route's per-route config asks for it.
        filters.append(_http_filter(HEADER_MUTATION, "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"))
    filters.append(_http_filter(
        BUFFER, "envoy.extensions.filters.http.buffer.v3.Buffer", max_request_bytes=edge.max_request_body_bytes,
    ))
    if public_grpc:
        filters.append(_http_filter(GRPC_WEB, "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"))
        filters.append(_trailer_headers_filter())
        filters.append(_transcoder(mesh, public_grpc))
    filters.append(_http_filter(ROUTER, "envoy.extensions.filters.http.router.v3.Router"))

    hcm: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "stream_idle_timeout": f"{edge.stream_idle_timeout_s}s",
        "request_headers_timeout": "10s",
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "local_reply_config": _local_reply_config(mesh, public_http),
        "route_config": {
            "name": "public", "virtual_hosts": [vhost], "max_direct_response_body_size_bytes": MAX_CONSOLE_FILE_BYTES,
        },
        "http_filters": filters,
    }
    return _listener("public", edge.listen, hcm)


def _mesh_listener(mesh: Mesh, dynamic: DynamicCanaries | None) -> dict[str, Any]:
    routes: list[dict[str, Any]] = []
    for s in mesh.enabled_services:
        if s.protocol != "grpc":
            continue
        for prefix in s.grpc_path_prefixes:
            routes += _service_routes(s, {"prefix": prefix}, timeout_zero=True, dynamic=dynamic)
    routes.append({
        "name": "not_found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": "no such service in the mesh"}},
    })
    hcm = {
        "@type": _HCM,
        "stat_prefix": "mesh",
        "codec_type": "HTTP2",
        "stream_idle_timeout": f"{mesh.edge.stream_idle_timeout_s}s",
        "route_config": {"name": "mesh", "virtual_hosts": [{"name": "mesh", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": ROUTER, "typed_config": {"@type": _ROUTER}}],
        # A caller's gRPC error then names the replica set that is down, as at the edge.
        "local_reply_config": {"mappers": _upstream_down_mappers([])},
    }
    return _listener("mesh", mesh.edge.mesh_listen, hcm)


def _listener(name: str, where: Endpoint, hcm: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": _socket(where),
        "filter_chains": [{
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
        }],
    }


# --------------------------------------------------------------------------------------------------
# Routes


def _service_routes(
    s: Service,
    match: dict[str, Any],
    timeout_zero: bool,
    per_filter: dict[str, Any] | None = None,
    dynamic: DynamicCanaries | None = None,
) -> list[dict[str, Any]]:
    """Routes for one match: the `x-canary: 1` route first (when there is a canary), then the split.

    A dynamic canary's two routes match only while the runtime says so (`canary_runtime_keys`).
    """
    base_name = f"{s.name}:{match.get('prefix') or match.get('path_separated_prefix')}"

    def route(target: dict[str, Any]) -> dict[str, Any]:
        r: dict[str, Any] = dict(target)
        if timeout_zero:
            # The route timeout covers the whole response, streams included; stream_idle_timeout
            # bounds silent streams instead.
            r["timeout"] = "0s"
        r["retry_policy"] = _RETRY_POLICY
        return r

    def entry(name: str, m: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
        e: dict[str, Any] = {"name": name, "match": m, "route": route(target)}
        if per_filter:
            e["typed_per_filter_config"] = per_filter
        return e

    out = []
    if s.canary:
        canary_match = dict(match)
        canary_match["headers"] = [
            *match.get("headers", []),
            {"name": CANARY_HEADER, "string_match": {"exact": "1"}},
        ]
        out.append(entry(f"{base_name}:canary-forced", canary_match, {"cluster": cluster_name(s, canary=True)}))
    elif _is_dynamic(s, dynamic):
        weight_key, forced_key = canary_runtime_keys(s.name)
        target = {"cluster": dynamic_canary_cluster(s.name)}
        forced = {
            **match,
            "headers": [*match.get("headers", []), {"name": CANARY_HEADER, "string_match": {"exact": "1"}}],
            "runtime_fraction": _runtime_percent(forced_key),
        }
        out.append(entry(f"{base_name}:canary-forced", forced, target))
        split = entry(f"{base_name}:canary", {**match, "runtime_fraction": _runtime_percent(weight_key)}, target)
        # A request the split sent to a canary carries x-canary onwards: every service it then calls
        # (tollway.mesh.propagation forwards the header) answers it from its own canary, if it has one.
        split["request_headers_to_add"] = [_CANARY_MARK]
        out.append(split)
    out.append(entry(base_name, match, _split_target(s)))
    return out


_CANARY_MARK = {
    "header": {"key": CANARY_HEADER, "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
}


def _runtime_percent(key: str) -> dict[str, Any]:
    # 0 % until the runtime says otherwise: no canary runs when Envoy starts.
    return {"default_value": {"numerator": 0, "denominator": "HUNDRED"}, "runtime_key": key}


def _is_dynamic(s: Service, dynamic: DynamicCanaries | None) -> bool:
    return dynamic is not None and s.canary is None and s.name in dynamic.services


def _not_json_api() -> dict[str, Any]:
    """The per-route config of a path that is no transcoded JSON API's (a fresh dict each time,
    so the rendered YAML has no anchors)."""
    return {
        TRANSCODER: {"@type": _FILTER_CONFIG, "disabled": True},
        TRAILER_HEADERS: {"@type": _FILTER_CONFIG, "disabled": True},
    }


def _json_api_route(public_grpc: list[Service]) -> dict[str, Any]:
    """The route JSON requests (`POST /v1/generate`) match *before* transcoding, and the catch-all.

    The CORS filter takes its policy from this route (it ignores direct-response routes, hence a
    cluster target), and the filters ahead of the transcoder keep the per-route config they read
    here, so header_mutation strips `grpc-status` from JSON answers only. The transcoder then
    either rewrites the path to the gRPC method, and the request is routed again by the service
    routes (with their canary split), or answers 404 for a path it cannot map.
    """
    if not public_grpc:
        return {
            "name": "not_found",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "no such API path"}},
        }
    return {
        "name": "json_api",
        "match": {"prefix": "/"},
        "route": {"cluster": cluster_name(public_grpc[0]), "timeout": "0s"},
        "typed_per_filter_config": {HEADER_MUTATION: _json_api_header_mutations()},
    }


def _split_target(s: Service) -> dict[str, Any]:
    if s.canary is None or s.canary.weight_percent == 0:
        return {"cluster": cluster_name(s)}
    if s.canary.weight_percent == 100:
        return {"cluster": cluster_name(s, canary=True)}
    return {
        "weighted_clusters": {
            "clusters": [
                {"name": cluster_name(s), "weight": 100 - s.canary.weight_percent},
                {
                    "name": cluster_name(s, canary=True),
                    "weight": s.canary.weight_percent,
                    "request_headers_to_add": [_CANARY_MARK],  # the rest of its path stays on canaries
                },
            ],
        },
    }


def _json_api_header_mutations() -> dict[str, Any]:
    """JSON answers lose the gRPC status headers; JSON requests lose headers gRPC cannot carry.

    gRPC metadata keys are [0-9a-z_.-]; HTTP/1.1 names may also hold !#$%&'*+^`|~. The gateway's
    gRPC server refuses a stream carrying such a key with INTERNAL, which the transcoder turns
    into a 500; the gateway reads no such header, so it is dropped here instead.
    """
    return {
        "@type": _TYPE + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
        "mutations": {
            "request_mutations": [
                {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": _NOT_GRPC_KEY}}}},
            ],
            "response_mutations": [
                {"remove": "grpc-status"}, {"remove": "grpc-message"}, {"remove": "grpc-accept-encoding"},
            ],
        },
    }


# A header name (not a pseudo-header; Envoy has lowercased it) that is not a legal gRPC metadata key.
# Pseudo-headers (":path") are all [a-z] after their leading ':'. Envoy's safe_regex must match
# the whole name.
_NOT_GRPC_KEY = ".+[^0-9a-z_.-].*|[^0-9a-z_.:-].*"


# --------------------------------------------------------------------------------------------------
# Filters


def _http_filter(name: str, type_name: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": _TYPE + type_name, **config}}


# A unary JSON answer's headers wait in the transcoder for the gRPC trailers (it sets the
# content length then), so they can still take the gateway's x-ratelimit-* and x-tollway-*
# trailing metadata: a gRPC server sends those with the answer, where initial metadata would
# cost a send of its own. A streamed answer has no content length and is passed on at once.
_TRAILER_HEADERS_LUA = """
function envoy_on_response(h)
  if h:headers():get("content-length") == nil then return end
  h:body()
  local trailers = h:trailers()
  if trailers == nil then return end
  local headers = h:headers()
  for k, v in pairs(trailers) do
    if k:sub(1, 12) == "x-ratelimit-" or k:sub(1, 10) == "x-tollway-" then
      headers:replace(k, v)
    end
  end
end
"""


def _trailer_headers_filter() -> dict[str, Any]:
    """Copies a unary JSON answer's ``x-ratelimit-*``/``x-tollway-*`` trailers into its headers.

    Off on the HTTP surfaces' and the console's routes; a gRPC answer (no content length) and a
    stream pass through at once."""
    return _http_filter(TRAILER_HEADERS, "envoy.extensions.filters.http.lua.v3.Lua",
                        default_source_code={"inline_string": _TRAILER_HEADERS_LUA})


def _transcoder(mesh: Mesh, public_grpc: list[Service]) -> dict[str, Any]:
    return _http_filter(
        TRANSCODER,
        "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        proto_descriptor=str(mesh.edge.descriptor_set),
        services=[g for s in public_grpc for g in s.grpc_services],
        convert_grpc_status=True,
        request_validation_options={"reject_unknown_method": True},
        max_request_body_size=mesh.edge.max_request_body_bytes,
        print_options={
            "always_print_primitive_fields": True,
            "preserve_proto_field_names": True,
            "stream_sse_style_delimited": True,
        },
    )


def _cors_policy(mesh: Mesh) -> dict[str, Any]:
    return {
        "@type": _TYPE + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": o} for o in mesh.edge.cors_origins],
        "allow_methods": "GET, POST, OPTIONS",
        "allow_headers": _CORS_ALLOW_HEADERS,
        "expose_headers": _CORS_EXPOSE_HEADERS,
        "max_age": "600",
        # Otherwise a preflight from a foreign origin is forwarded to the gRPC upstream.
        "forward_not_matching_preflights": False,
    }


def _local_reply_config(mesh: Mesh, public_http: list[Service]) -> dict[str, Any]:
    limit = mesh.edge.max_request_body_bytes
    too_large = f"request body is larger than the limit of {limit} bytes; send a smaller body"
    openai_paths = [p for s in public_http for p in s.public_paths]
    # First: the first mapper that matches wins, and an unreachable service is a 503 like any other.
    # Anthropic's paths come before the OpenAI ones they are served with (issue 16).
    anthropic_paths = [p for p in openai_paths if p.startswith(_ANTHROPIC_PREFIX)]
    anthropic_down, anthropic_rest = _anthropic_mappers(anthropic_paths, too_large)
    mappers: list[dict[str, Any]] = anthropic_down + _upstream_down_mappers(openai_paths) + anthropic_rest
    if openai_paths:
        # OpenAI SDKs parse {"error": {...}}: every reply Envoy makes itself on their paths (413, a
        # malformed request, no healthy upstream, a timeout) comes in that shape.
        on_openai_path = _path_filter(openai_paths)
        mappers.append({
            "filter": {"and_filter": {"filters": [_status_is(413), on_openai_path]}},
            "body_format_override": {"json_format": {"error": {
                "message": too_large, "type": "invalid_request_error", "param": None, "code": "request_too_large",
            }}},
        })
        for status, kind in _OPENAI_ERROR_TYPES:
            mappers.append({
                "filter": {"and_filter": {"filters": [_status_is(status), on_openai_path]}},
                "body_format_override": {"json_format": {"error": {
                    "message": "%LOCAL_REPLY_BODY%", "type": kind, "param": None, "code": None,
                }}},
            })
        mappers.append({
            "filter": on_openai_path,
            "body_format_override": {"json_format": {"error": {
                "message": "%LOCAL_REPLY_BODY%", "type": "api_error", "param": None, "code": None,
            }}},
        })
    # Native gRPC and gRPC-Web: Envoy would turn 413 into UNKNOWN; say RESOURCE_EXHAUSTED, as gRPC
    # itself does for an oversized message, with the limit in grpc-message.
    mappers.append({
        "filter": {"and_filter": {"filters": [_status_is(413), _grpc_request()]}},
        "headers_to_add": [{
            "header": {"key": "grpc-status", "value": str(_GRPC_RESOURCE_EXHAUSTED)},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }],
        "body_format_override": {"text_format": too_large},
    })
    mappers.append({
        "filter": _status_is(413),
        "body_format_override": {"json_format": {
            "code": _GRPC_RESOURCE_EXHAUSTED, "message": too_large, "details": [],
        }},
    })
    # Envoy's own 400/404 (malformed JSON, unknown path) in the same JSON shape as transcoded gRPC
    # errors; gRPC callers keep the plain message in grpc-message.
    for status, code in ((400, _GRPC_INVALID_ARGUMENT), (404, _GRPC_NOT_FOUND)):
        mappers.append({
            "filter": {"and_filter": {"filters": [_status_is(status), _not_grpc_request()]}},
            "body_format_override": {"json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": []}},
        })
    return {"mappers": mappers}


# Envoy's response flags for "no answer from the upstream": UF connection failure, UH no healthy
# host, URX retries (on connect failure) exhausted, UC connection closed before the response (the
# service died mid-request), UR the upstream reset the stream.
_UPSTREAM_DOWN_FLAGS = ("UF", "UH", "URX", "UC", "UR")
_GRPC_UNAVAILABLE = 14


# Public paths of Anthropic's Messages API: its SDK parses {"type": "error", "error": {type, message}}.
_ANTHROPIC_PREFIX = "/v1/messages"
_ANTHROPIC_ERROR_TYPES = (
    (400, "invalid_request_error"),
    (404, "not_found_error"),
    (413, "request_too_large"),
    (429, "rate_limit_error"),
    (504, "timeout_error"),
)


def _anthropic_mappers(paths: list[str], too_large: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Envoy's own replies on Anthropic's paths in Anthropic's shape: (service down, the rest)."""
    if not paths:
        return [], []
    on_path = _path_filter(paths)
    down = {"and_filter": {"filters": [
        _status_is(503), {"response_flag_filter": {"flags": list(_UPSTREAM_DOWN_FLAGS)}}, on_path,
    ]}}
    down_mappers: list[dict[str, Any]] = [{
        "filter": down,
        "headers_to_add": [{
            "header": {"key": "retry-after", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }],
        "body_format_override": {"json_format": {"type": "error", "error": {
            "type": "api_error",
            "message": "service %UPSTREAM_CLUSTER% is unavailable; retry shortly (%LOCAL_REPLY_BODY%)",
        }}},
    }]
    mappers: list[dict[str, Any]] = []
    for status, kind in _ANTHROPIC_ERROR_TYPES:
        message = too_large if status == 413 else "%LOCAL_REPLY_BODY%"
        mappers.append({
            "filter": {"and_filter": {"filters": [_status_is(status), on_path]}},
            "body_format_override": {"json_format": {"type": "error", "error": {"type": kind, "message": message}}},
        })
    mappers.append({
        "filter": on_path,
        "body_format_override": {"json_format": {"type": "error", "error": {
            "type": "api_error", "message": "%LOCAL_REPLY_BODY%",
        }}},
    })
    return down_mappers, mappers


def _upstream_down_mappers(openai_paths: list[str]) -> list[dict[str, Any]]:
    """Local replies for a request whose service did not answer (dead, restarting, unhealthy).

    Envoy's own text ("upstream connect error or disconnect/reset before headers...") names no
    service. The launcher restarts a dead service within seconds, so the client gets a 503 (gRPC
    UNAVAILABLE) naming the cluster, with `retry-after: 1`, in the shape of its surface:
    - native gRPC and gRPC-Web: the message in `grpc-message` (Envoy sets grpc-status 14 for 503);
    - JSON and SSE (transcoded): the JSON of a transcoded gRPC error, with an ErrorInfo whose
      reason is SERVICE_UNAVAILABLE and whose metadata names the service (`dependency`, as for
      REDIS_UNAVAILABLE);
    - the OpenAI paths: OpenAI's error shape.
    """
    down = {"and_filter": {"filters": [
        _status_is(503), {"response_flag_filter": {"flags": list(_UPSTREAM_DOWN_FLAGS)}},
    ]}}
    message = "service %UPSTREAM_CLUSTER% is unavailable; retry shortly (%LOCAL_REPLY_BODY%)"
    retry_after = [{
        "header": {"key": "retry-after", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }]
    mappers: list[dict[str, Any]] = []
    if openai_paths:
        mappers.append({
            "filter": {"and_filter": {"filters": [down, _path_filter(openai_paths)]}},
            "headers_to_add": retry_after,
            "body_format_override": {"json_format": {"error": {
                "message": message, "type": "service_unavailable", "param": None, "code": "unavailable",
            }}},
        })
    mappers.append({
        "filter": {"and_filter": {"filters": [down, _grpc_request()]}},
        "headers_to_add": retry_after,
        "body_format_override": {"text_format_source": {"inline_string": message}},
    })
    mappers.append({
        "filter": down,
        "headers_to_add": retry_after,
        "body_format_override": {"json_format": {
            "code": _GRPC_UNAVAILABLE,
            "message": message,
            "details": [{
                "@type": _TYPE + "google.rpc.ErrorInfo",
                "reason": "SERVICE_UNAVAILABLE",
                "domain": "edge.tollway",
                "metadata": {"dependency": "%UPSTREAM_CLUSTER%"},
            }],
        }},
    })
    return mappers


def _path_filter(paths: list[str]) -> dict[str, Any]:
    # One regex per path: Envoy refuses a regex whose RE2 program exceeds 100 instructions.
    filters = [
        {"header_filter": {"header": {"name": ":path", "string_match": {"safe_regex": {"regex": _paths_regex([p])}}}}}
        for p in paths
    ]
    return filters[0] if len(filters) == 1 else {"or_filter": {"filters": filters}}


# OpenAI's error type for a status Envoy may answer by itself; anything else is "api_error".
_OPENAI_ERROR_TYPES = (
    (400, "invalid_request_error"),
    (404, "not_found_error"),
    (408, "timeout"),
    (429, "rate_limit_error"),
    (503, "service_unavailable"),
    (504, "timeout"),
)


def _paths_regex(paths: list[str]) -> str:
    # Same paths as path_separated_prefix: the path itself, or it followed by '/' or a query.
    # Public paths are [A-Za-z0-9._~/-] (checked by the topology); only '.' is special in RE2.
    return "^(" + "|".join(p.replace(".", "\\.") for p in paths) + ")([/?].*)?$"


def _status_is(status: int) -> dict[str, Any]:
    # RuntimeUInt32 insists on a runtime key; no runtime layer sets it, so the default applies.
    return {"status_code_filter": {"comparison": {
        "op": "EQ", "value": {"default_value": status, "runtime_key": f"tollway.local_reply.{status}"},
    }}}


def _grpc_request() -> dict[str, Any]:
    return {"and_filter": {"filters": [
        {"header_filter": {"header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}}}},
        {"header_filter": {"header": {"name": "x-envoy-original-method", "present_match": False}}},
    ]}}


def _not_grpc_request() -> dict[str, Any]:
    # A transcoded request already looks like gRPC (content-type application/grpc) when the
    # transcoder rejects its body, but it carries x-envoy-original-method.
    return {"or_filter": {"filters": [
        {"header_filter": {"header": {"name": "content-type", "present_match": False}}},
        {"header_filter": {"header": {
            "name": "content-type", "string_match": {"prefix": "application/grpc"}, "invert_match": True,
        }}},
        {"header_filter": {"header": {"name": "x-envoy-original-method", "present_match": True}}},
    ]}}


# --------------------------------------------------------------------------------------------------
# Clusters


def _cluster(mesh: Mesh, s: Service, name: str, endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    protocol = {"http2_protocol_options": {}} if s.protocol == "grpc" else {"http_protocol_options": {}}
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": f"{mesh.edge.connect_timeout_ms / 1000:g}s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "common_http_protocol_options": {"idle_timeout": f"{UPSTREAM_IDLE_TIMEOUT_S}s"},
                "explicit_http_config": protocol,
            },
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(e)}} for e in endpoints]}],
        },
    }
    # Health checks only matter when there is another replica to send the traffic to.
    if len(endpoints) > 1:
        hc: dict[str, Any] = {
            "timeout": "1s",
            "interval": "5s",
            "no_traffic_interval": "5s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
        }
        if s.protocol == "grpc":
            hc["grpc_health_check"] = {"service_name": s.grpc_services[0]}
            c["health_checks"] = [hc]
        elif s.health_path:
            hc["http_health_check"] = {"path": s.health_path}
            c["health_checks"] = [hc]
    return c


def _eds_cluster(mesh: Mesh, s: Service, dynamic: DynamicCanaries) -> dict[str, Any]:
    """The dynamic canary's cluster: its endpoints from `<eds_dir>/<cluster>.yaml`, reread when a
    file is moved into that directory (the writer renames a finished file over the old one)."""
    name = dynamic_canary_cluster(s.name)
    c = _cluster(mesh, s, name, ())
    del c["load_assignment"]
    c["type"] = "EDS"
    c["eds_cluster_config"] = {"eds_config": {
        "resource_api_version": "V3",
        "path_config_source": {
            "path": str(dynamic.eds_dir / f"{name}.yaml"),
            "watched_directory": {"path": str(dynamic.eds_dir)},
        },
    }}
    return c


def _socket(e: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": e.host, "port_value": e.port}}
