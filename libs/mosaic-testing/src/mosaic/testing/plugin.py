"""pytest fixtures for Mosaic: real servers only. Load with `pytest_plugins = ["mosaic.testing.plugin"]`."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mosaic.platform.config import CassandraSettings, PlatformSettings
from mosaic.testing import cassandra_node
from mosaic.testing.nats_server import NatsServer, NatsServerMissing
from mosaic.testing.receivers import OtlpReceiver, WebhookReceiver
from mosaic.testing.smtp import SmtpReceiver
from mosaic.testing.watchdog import watching


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for one test. Without nats-server on the PATH the run
    stops at the first test that needs it, with one message naming the install command, instead
    of an error per test."""
    try:
        server = NatsServer().start()
    except NatsServerMissing as missing:
        pytest.exit(str(missing), returncode=pytest.ExitCode.USAGE_ERROR)
    yield server
    server.close()


CASSANDRA_FIXTURES = {"cassandra_port", "cassandra_keyspace"}
# What starts a server process of its own (nats-server; the services and meshes all need it).
SERVER_FIXTURES = {"nats_server"}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    # A teardown past 60 s prints the asyncio tasks that hold it (pytest-timeout shows threads).
    with watching(f"teardown of {item.nodeid}", after=60.0):
        return (yield)


def pytest_configure(config: pytest.Config) -> None:
    # The command line must not pick up the credentials `mosaic run` left in .local/pki: tests
    # that want TLS or tokens say so.
    os.environ.setdefault("MOSAIC_TLS_CA", "")
    os.environ.setdefault("MOSAIC_AUTH_TOKEN_FILE", "")
    config.addinivalue_line("markers", "cassandra: needs the Cassandra node (set on every such test by the plugin)")
    config.addinivalue_line("markers", "servers: starts nats-server, services or a mesh (set by the plugin)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs Cassandra (those that ask for the node, and every test run with
    a fixture parametrised by store: its `cassandra` half), and every test that starts servers,
    so the tiers can leave them out (`-m "not cassandra"`, `-m "not cassandra and not servers"`)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        fixtures = set(getattr(item, "fixturenames", ()))
        on_cassandra = callspec is not None and "cassandra" in callspec.params.values()
        if on_cassandra or CASSANDRA_FIXTURES & fixtures:
            item.add_marker(pytest.mark.cassandra)
        if SERVER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session")
def cassandra_port() -> int:
    """The local Cassandra node, started if it is not running. Never skipped. In the fast tier
    (MOSAIC_TEST_WITHOUT_CASSANDRA=1) a test that reaches for it fails: it lacks its marker."""
    if os.environ.get("MOSAIC_TEST_WITHOUT_CASSANDRA") == "1":
        pytest.fail(
            "this test needs Cassandra but is not marked `cassandra`; it reaches the node "
            "through a fixture the plugin does not know (add it to CASSANDRA_FIXTURES)"
        )
    return cassandra_node.ensure_node()


@pytest.fixture(scope="module")
def cassandra_keyspace(cassandra_port: int) -> Iterator[CassandraSettings]:
    """A keyspace of its own for one test module, dropped afterwards."""
    settings = cassandra_node.new_keyspace_settings(cassandra_port)
    yield settings
    cassandra_node.drop_keyspace(settings)


@pytest.fixture
def make_settings(tmp_path: Path, nats_server: NatsServer) -> Callable[..., PlatformSettings]:
    """Builds a service's PlatformSettings for this test's nats-server and data folder."""

    def make(service: str, **environ: str) -> PlatformSettings:
        # Authentication has tests of its own (mosaic-platform's test_auth.py, the e2e walk);
        # the other tests call the services as a trial deployment would.
        env = {
            "MOSAIC_NATS_URL": nats_server.url,
            "MOSAIC_DATA_DIR": str(tmp_path / "data"),
            "MOSAIC_AUTH": "off",
            **environ,
        }
        return PlatformSettings.from_env(service, env)

    return make


@dataclass(frozen=True)
class RecordedMetrics:
    """This process's metrics: the SDK's in-memory reader, and the port of its real Prometheus
    endpoint (served by `metrics.setup`, as a service serves it)."""

    reader: InMemoryMetricReader
    port: int

    def points(self, name: str) -> list:
        return metric_points(self.reader, name)

    def scrape(self) -> str:
        return scrape_metrics(self.port)


def metric_points(reader: InMemoryMetricReader, name: str) -> list:
    """The data points of one metric, as a collection by `reader` now reads them."""
    data = reader.get_metrics_data()
    return [
        point
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def scrape_metrics(port: int) -> str:
    """The Prometheus text a real scrape of 127.0.0.1:`port` gets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


@pytest.fixture(scope="session")
def recorded_metrics() -> RecordedMetrics:
    """The metrics SDK, set up once for the whole session (a process has one MeterProvider):
    every in-process service and bus records from then on."""
    from mosaic.platform import metrics

    reader = InMemoryMetricReader()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    port = metrics.setup("tester", {"MOSAIC_METRICS_PORT": str(free)}, readers=[reader])
    if not port:
        pytest.fail("metrics were set up outside this fixture: tests must use `recorded_metrics`")
    return RecordedMetrics(reader, port)


@pytest.fixture(scope="session")
def recorded_spans() -> InMemorySpanExporter:
    """Every span this process ends from now on, kept in memory by the real SDK (a process has
    one TracerProvider: the first test to want one installs it, later ones add to it)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """A real SMTP server (aiosmtpd) on a loopback port."""
    receiver = SmtpReceiver().start()
    yield receiver
    receiver.stop()


async def eventually(check: Callable[[], Awaitable[object] | object], timeout: float = 20.0, interval: float = 0.05):
    """Poll `check` until it returns a truthy value or raises no AssertionError; then return it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            failure: BaseException | None = AssertionError(f"still {value!r}")
        except AssertionError as error:
            failure = error
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {failure}") from failure
        await asyncio.sleep(interval)


@pytest.fixture(params=["embedded", "cassandra"])
def store_settings(request, tmp_path: Path) -> PlatformSettings:
    """PlatformSettings for each store backend in turn: the contract suites run on both."""
    environ = {"MOSAIC_STORE": request.param, "MOSAIC_DATA_DIR": str(tmp_path / "data"), "MOSAIC_AUTH": "off"}
    if request.param == "cassandra":
        keyspace: CassandraSettings = request.getfixturevalue("cassandra_keyspace")
        environ |= {"MOSAIC_CASSANDRA_PORT": str(keyspace.port), "MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace}
    return PlatformSettings.from_env("test", environ)
