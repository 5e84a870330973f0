"""An OTLP/gRPC trace collector in the test (or bench) process: the opentelemetry-proto
TraceService on a grpc server, keeping what it is sent as (service.name, span) pairs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it (``keep=False``: counts them only, for benches)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self.count = 0
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.count += len(scope.spans)
                    if self.keep:
                        self.spans.extend((attrs.get("service.name", ""), s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, trace_pb2.Span]]:
        """The spans of one trace received so far."""
        with self._lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id == trace_id]

    def all(self) -> list[tuple[str, trace_pb2.Span]]:
        """Every span received so far."""
        with self._lock:
            return list(self.spans)


@contextlib.contextmanager
def otlp_receiver(keep: bool = True) -> Iterator[tuple[Receiver, int]]:
    """A running receiver on a free loopback port, and that port; stopped after."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    kept = Receiver(keep)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(kept, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield kept, port
    finally:
        server.stop(None)
