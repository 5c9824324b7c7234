"""TLS towards the dependencies: the bus against a real nats-server that demands TLS with a
client certificate, and the settings that name the files (Cassandra's client encryption takes
the same settings; the local node runs without it)."""

from __future__ import annotations

import pytest

from mosaic.cli import pki as local_pki
from mosaic.events.v1 import event_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.config import ConfigError, PlatformSettings, TlsSettings
from mosaic.platform.errors import Unavailable
from mosaic.testing.nats_server import NatsServer


@pytest.fixture
def tls_nats(tmp_path):
    pki = local_pki.ensure(tmp_path / "pki", admin_scopes=[])
    server = NatsServer(
        args=(
            "--tls",
            "--tlscert",
            str(pki.cert("ingestion")),
            "--tlskey",
            str(pki.key("ingestion")),
            "--tlscacert",
            str(pki.ca),
            "--tlsverify",
        )
    ).start()
    yield server, pki
    server.close()


async def test_the_bus_publishes_over_tls_with_a_client_certificate(tls_nats):
    server, pki = tls_nats
    tls = TlsSettings(ca=str(pki.ca), cert=str(pki.cert("cli")), key=str(pki.key("cli")), server_name="localhost")
    bus = await Bus.connect(server.url, "test", 1, tls=tls)
    try:
        await bus.ensure_streams([topics.EVENTS_RAW])
        assert await bus.publish(topics.EVENTS_RAW, "k", event_pb2.Event(message_id="m"), "m") is False
    finally:
        await bus.close()


async def test_without_tls_the_server_refuses_the_bus(tls_nats):
    server, _ = tls_nats
    with pytest.raises(Unavailable, match="did not complete a connection within 2 s"):
        await Bus.connect(server.url, "test", 1, deadline=2)


def test_tls_settings_name_what_is_missing(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(
        ConfigError, match="MOSAIC_NATS_TLS_KEY: MOSAIC_NATS_TLS_CERT and MOSAIC_NATS_TLS_KEY go together"
    ):
        PlatformSettings.from_env("t", {"MOSAIC_AUTH": "off", "MOSAIC_NATS_TLS_CERT": str(cert)})
    with pytest.raises(ConfigError, match="MOSAIC_CASSANDRA_TLS_CA: is required for TLS"):
        PlatformSettings.from_env("t", {"MOSAIC_AUTH": "off", "MOSAIC_CASSANDRA_TLS_SERVER_NAME": "cassandra.db"})
    settings = PlatformSettings.from_env("t", {"MOSAIC_AUTH": "off", "MOSAIC_CASSANDRA_TLS_CA": str(cert)})
    assert settings.cassandra.tls.enabled and not settings.nats_tls.enabled
