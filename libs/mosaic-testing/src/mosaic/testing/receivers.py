"""Receivers that stand in for the world outside the mesh in tests: an OTLP trace collector and
a webhook endpoint. Both are real servers on loopback ports the OS picks, run on threads so
they work for services in other processes and for any event loop."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from mosaic.cli.demo_webhook import DemoWebhook, ReceivedRequest

__all__ = ["OtlpReceiver", "ReceivedRequest", "ReceivedSpan", "WebhookReceiver"]


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports: list[trace_service_pb2.ExportTraceServiceRequest] = []  # whole, attributes and all
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        received = []
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.kind,
                        )
                    )
        with self._lock:
            self.spans.extend(received)
            self.exports.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)


class WebhookReceiver(DemoWebhook):
    """The demo's endpoint, made to answer `status` to every POST after `delay` seconds with
    `answer_headers` (e.g. Retry-After), as a failing or slow destination would."""

    def __init__(self, status: int = 200, port: int = 0) -> None:
        super().__init__(port)
        self.status = status
        self.delay = 0.0
        self.answer_headers: dict[str, str] = {}

    def answer(self) -> tuple[int, dict[str, str]]:
        if self.delay:
            time.sleep(self.delay)
        return self.status, dict(self.answer_headers)

    def start(self) -> WebhookReceiver:
        super().start()
        return self
