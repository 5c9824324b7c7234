"""The one bootstrap of a Mosaic service process.

`run(name, build)` sets up telemetry, connects the bus and declares the streams, lets the
service `build` register its servicer and its consumers, joins the service's members and takes
this replica's share of the partitions (`mosaic.platform.ownership`), then serves gRPC with the
health protocol (grpc.health.v1), reflection, the error interceptor and OpenTelemetry's
interceptor. On SIGTERM or SIGINT it stops gracefully:

1. health answers NOT_SERVING, so load balancers stop sending new calls;
2. it leaves the members; the consumers finish the message in hand and give back the rest, and
   each lease is released, so the other replicas take the partitions over at once;
3. `server.stop(grace)` lets calls in flight finish (they may still publish);
4. the bus drains, flushing pending publishes and acks; the store closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.grpc.filters import health_check, negate

from mosaic.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from mosaic.platform import metrics, telemetry, topics
from mosaic.platform.audit import AuditLog, AuditServicer, deployment_salt
from mosaic.platform.auth import AuthInterceptor
from mosaic.platform.bus import Bus, nats_security
from mosaic.platform.config import ConfigError, PlatformSettings, SecuritySettings
from mosaic.platform.consumer_lag import ConsumerLag
from mosaic.platform.errors import ErrorInterceptor
from mosaic.platform.metrics_interceptor import MetricsInterceptor
from mosaic.platform.ownership import Ownership

log = logging.getLogger("mosaic.server")


@dataclass
class Runtime:
    """What a service's build function gets: settings, the bus, the server, a cleanup stack, and
    the ownership of partitions (follow it for state kept per partition)."""

    settings: PlatformSettings
    bus: Bus
    server: grpc.aio.Server
    cleanup: AsyncExitStack
    ownership: Ownership
    service_names: list[str] = field(default_factory=list)

    def add_service(self, full_name: str) -> None:
        """Name a registered servicer (e.g. `mosaic.profile.v1.ProfileService`) for health and reflection."""
        self.service_names.append(full_name)


Build = Callable[[Runtime], Awaitable[None]]


def listen_host(bind_host: str, everywhere: str) -> str:
    """MOSAIC_BIND_HOST as a listening address (IPv6 literals bracketed); `everywhere` if unset."""
    if not bind_host:
        return everywhere
    return f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host


class Service:
    """A running service; `start` returns once it is serving, `stop` stops it gracefully."""

    def __init__(self, settings: PlatformSettings, build: Build) -> None:
        self.settings = settings
        self._build = build
        self._cleanup = AsyncExitStack()
        self._health = health.aio.HealthServicer()
        self.port = 0
        self.health_port = 0
        self.runtime: Runtime | None = None

    async def start(self) -> None:
        settings = self.settings
        bus = await Bus.connect(
            settings.nats_url,
            settings.service,
            settings.partitions,
            settings.stream_replicas,
            settings.nats_tls,
            settings.nats_credentials,
        )
        self._cleanup.push_async_callback(bus.close)
        security = settings.security
        await bus.ensure_streams(
            topics.for_deployment(settings.events_dedup_window, security.audit_retention_days),
            settings.stream_max_messages,
        )
        salt = security.audit_salt or await deployment_salt(bus, settings.stream_replicas)
        audit = AuditLog(bus, settings.service, salt)
        self._cleanup.push_async_callback(audit.close)  # before the bus closes (last in, first out)
        # Outermost first: metrics (so they see the code the error interceptor chose), tracing
        # (health probes every few seconds would be most of the spans: none), errors (so what
        # auth raises is a status with details), then authentication and audit.
        server = grpc.aio.server(
            interceptors=[
                MetricsInterceptor(),
                aio_server_interceptor(filter_=negate(health_check())),
                ErrorInterceptor(),
                AuthInterceptor(security, audit.record),
            ]
        )
        secure = nats_security(settings.nats_tls, settings.nats_credentials)
        ownership = Ownership(
            bus,
            settings.service,
            settings.partitions,
            settings.nats_url,
            settings.lease_seconds,
            secure,
            settings.stream_replicas,
        )
        runtime = Runtime(settings, bus, server, self._cleanup, ownership)
        await self._build(runtime)
        # Before the server starts, as consumers always did: a lone replica is consuming every
        # partition by the time it says it serves.
        self._cleanup.push_async_callback(ownership.stop)  # first out: before the bus and store close
        await ownership.start()
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit), server)
        runtime.add_service(audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if security.reflection:
            reflection.enable_server_reflection(
                [*runtime.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
            )
        if security.auth == "off":
            log.warning("authentication is off: any caller that reaches the port may call every method")
        self.port = _add_port(server, f"{listen_host(settings.bind_host, '[::]')}:{settings.grpc_port}", security)
        await server.start()
        if settings.health_port:
            probes = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, probes)
            self.health_port = probes.add_insecure_port(
                f"{listen_host(settings.bind_host, '[::]')}:{settings.health_port}"
            )
            await probes.start()
            self._cleanup.push_async_callback(probes.stop, 0)
        for name in ["", *runtime.service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.runtime = runtime
        if metrics.enabled():
            lag = ConsumerLag(settings.nats_url, settings.service, lambda: ownership.owned, secure=secure)
            ownership.follow(acquired=lag.acquired)
            await lag.start()
            self._cleanup.push_async_callback(lag.stop)
        log.info(
            "serving",
            extra={
                "fields": {
                    "service": settings.service,
                    "grpc_port": self.port,
                    "member": ownership.member,
                    "partitions": sorted(ownership.owned),
                }
            },
        )

    async def stop(self) -> None:
        if self.runtime is None:
            await self._cleanup.aclose()
            return
        await self._health.enter_graceful_shutdown()
        await self.runtime.ownership.stop()
        await self.runtime.bus.stop_consuming()
        await self.runtime.server.stop(self.settings.grace_seconds)
        await self._cleanup.aclose()  # last in, first out: the service's own, then the bus
        self.runtime = None
        log.info("stopped", extra={"fields": {"service": self.settings.service}})


def _add_port(server: grpc.aio.Server, address: str, security: SecuritySettings) -> int:
    """TLS when the service has a certificate; mutual TLS when it also has the callers' CA."""
    if not security.tls_cert:
        return server.add_insecure_port(address)
    client_ca = Path(security.client_ca).read_bytes() if security.client_ca else None
    credentials = grpc.ssl_server_credentials(
        [(Path(security.tls_key).read_bytes(), Path(security.tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    return server.add_secure_port(address, credentials)


def main(load: Callable[[], Any], build: Callable[[Runtime, Any], Awaitable[object]]) -> None:
    """A service's entry point: load its settings (exit 2 naming the bad variable), then run."""
    # A child inherits its parent's signal mask: `mosaic run` blocks SIGINT and SIGTERM to
    # sigwait for them, and this process must still receive the SIGTERM that stops it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        settings = load()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None

    async def build_then_tune_gc(runtime: Runtime) -> None:
        await build(runtime, settings)
        tune_gc()

    run(settings.platform, build_then_tune_gc)


def tune_gc() -> None:
    """Once a process has started: what start-up made lives as long as the process. Frozen, it
    is out of the collector's sight, so a full collection under load scans only what requests
    made: ~1 ms instead of 25-77 ms stalls of every call in flight (measured on ingestion's
    batch p99, and on delivery's webhook p99). A batch in flight is thousands of young
    containers (parsed JSON, messages): collecting every 700 allocations promoted them over and
    over; 10,000 costs a fifth."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def run(settings: PlatformSettings, build: Build) -> None:
    """Run a service until SIGTERM or SIGINT; the process entry point of every service."""
    try:
        telemetry.setup(settings.service, settings.log_level)
        metrics_port = metrics.setup(settings.service)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if metrics_port:
        log.info("metrics serving", extra={"fields": {"service": settings.service, "metrics_port": metrics_port}})
    try:
        asyncio.run(_serve(settings, build))
    finally:
        metrics.shutdown()
        telemetry.shutdown()


async def _serve(settings: PlatformSettings, build: Build) -> None:
    service = Service(settings, build)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
        await stop.wait()
    finally:
        await service.stop()
