"""Structured logs and OpenTelemetry tracing, set up once per process."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from tollway.mesh import tracing
from tollway.mesh.config import ConfigError, MeshConfig

_provider: TracerProvider | None = None

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line; ``extra={...}`` fields become top-level keys."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = f"{span.trace_id:032x}"
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _WithholdMetadataBytes(logging.Filter):
    """Rewrites gRPC's "Invalid encoding on b'...'" records, which quote a header value in full.

    gRPC logs every metadata value that is not UTF-8, traceback and all, when a servicer
    reads the metadata; the value may be an API key. The record keeps its place in the log,
    with the value's length instead of its bytes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid encoding on"):
            size = len(record.args[0]) if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "a metadata value of %s bytes is not UTF-8 (value withheld); it is read as Latin-1"
            record.args = (size,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(service: str, cfg: MeshConfig) -> None:
    """Routes every log record of the process to stderr in the configured format.

    Header values that gRPC would log verbatim are withheld (see _WithholdMetadataBytes).
    """
    handler = logging.StreamHandler(sys.stderr)
    if cfg.log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    elif cfg.log_format == "text":
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    else:
        raise ConfigError(f"Config 'TOLLWAY_LOG_FORMAT' has value {cfg.log_format!r}. Use json or text.")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _WithholdMetadataBytes) for f in grpc_core.filters):
        grpc_core.addFilter(_WithholdMetadataBytes())


def tracing_enabled(cfg: MeshConfig) -> bool:
    """Whether spans go anywhere; when they do not, interceptors are left out entirely."""
    return cfg.otel_exporter != "none"


def current_provider() -> TracerProvider | None:
    """The provider :func:`tracer_provider` made in this process, or None while tracing is off.

    For clients made after the server started (lazily, on first use): given to
    ``tollway.mesh.clients.channel``, their calls carry the trace on.
    """
    return _provider


def tracer_provider(service: str, cfg: MeshConfig) -> TracerProvider:
    """The process's tracer provider (made on first call, then reused); stages become spans.

    A trace that arrives sampled (Envoy's, or a caller's ``traceparent``) stays sampled, one that
    arrives unsampled stays unsampled; a trace this process starts is kept with the probability
    ``TOLLWAY_OTEL_SAMPLE_RATIO``, decided from its trace id, so every process decides alike.

    Raises:
        ConfigError: The exporter or the sample ratio is not valid.
    """
    global _provider
    if _provider is not None:
        return _provider
    if not 0.0 <= cfg.otel_sample_ratio <= 1.0:
        raise ConfigError(
            f"Config 'TOLLWAY_OTEL_SAMPLE_RATIO' has value {cfg.otel_sample_ratio!r}. Use a number from 0 to 1."
        )
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"tollway-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(cfg.otel_sample_ratio)),
    )
    if cfg.otel_exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif cfg.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.otel_endpoint, insecure=True)))
    elif cfg.otel_exporter != "none":
        raise ConfigError(f"Config 'TOLLWAY_OTEL_EXPORTER' has value {cfg.otel_exporter!r}. Use none, console or otlp.")
    trace.set_tracer_provider(provider)
    tracing.enable(provider)
    _provider = provider
    return provider
