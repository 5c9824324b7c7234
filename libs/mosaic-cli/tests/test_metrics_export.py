"""A real service process exports its metrics: over OTLP to a real gRPC receiver when
OTEL_METRICS_EXPORTER=otlp, and on its Prometheus endpoint, consumer lag per partition included."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from mosaic.cli.mesh import Mesh


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP/gRPC metrics endpoint that keeps the names it is sent, by service."""

    def __init__(self) -> None:
        self.names: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        with self._lock:
            for resource in request.resource_metrics:
                service = next(
                    (a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), ""
                )
                for scope in resource.scope_metrics:
                    self.names.update((service, metric.name) for metric in scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def stop(self) -> None:
        self._server.stop(None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _partitions_scraped(port: int, partitions: int) -> str:
    """The Prometheus text when it shows every partition's lag; empty until then."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return text if all(f'mosaic_partition="{p}"' in text for p in range(partitions)) else ""


def test_a_service_exports_over_otlp_and_serves_prometheus_with_its_consumer_lag(nats_server, tmp_path: Path):
    receiver = MetricsReceiver()
    metrics_port = _free_port()
    env = {
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_DATA_DIR": str(tmp_path / "data"),
        "MOSAIC_AUTH": "off",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "MOSAIC_PARTITIONS": "4",
        "MOSAIC_METRICS_PORT": str(metrics_port),
    }
    mesh = Mesh(env, tmp_path / "logs")
    try:
        mesh.start_service("identity")
        with grpc.insecure_channel(mesh.address("identity")) as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            # Health checks are not measured; a reflection call is.
            list(
                reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
            )
        exported = _until(
            lambda: {("identity", "mosaic.rpc.server.duration"), ("identity", "mosaic.consumer.lag")} <= receiver.names
        )
        assert exported, f"exported only {sorted(receiver.names)}"
        # Each partition's durable is created by its consumer task as the service starts, so
        # the poll before it may miss some: scrape until every partition is there (poll: 15 s).
        text = _until(lambda: _partitions_scraped(metrics_port, 4), timeout=45)
    finally:
        mesh.stop()
        receiver.stop()
    assert text, "the scrape never showed the consumer lag of all four partitions"
    assert "mosaic_consumer_lag{" in text and 'messaging_consumer_group_name="identity"' in text
    assert 'rpc_method="ServerReflectionInfo"' in text and 'rpc_method="Check"' not in text
