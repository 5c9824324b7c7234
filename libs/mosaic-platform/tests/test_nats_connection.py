"""What a connection logs of its own end, against a real nats-server: a stop the service asked
for is said at info level, a server that went away is a warning."""

from __future__ import annotations

import logging

import pytest

from mosaic.platform.nats_connection import connect
from mosaic.testing.nats_server import NatsServer
from mosaic.testing.plugin import eventually


@pytest.fixture
def server():
    server = NatsServer().start()
    yield server
    server.close()


def said(caplog, text: str) -> list[int]:
    return [r.levelno for r in caplog.records if r.getMessage() == text]


async def test_a_connection_closed_on_purpose_is_no_warning(server, caplog):
    caplog.set_level(logging.INFO, "mosaic")
    nc = await connect(server.url, "test", None, "", 5)
    await nc.close()
    assert said(caplog, "disconnected from nats") == []
    assert said(caplog, "connection to nats closed") == [logging.INFO]


async def test_a_server_that_goes_away_is_a_warning(server, caplog):
    caplog.set_level(logging.INFO, "mosaic")
    nc = await connect(server.url, "test", None, "", 5)
    try:
        server.kill()
        await eventually(lambda: said(caplog, "disconnected from nats") == [logging.WARNING])
        assert said(caplog, "connection to nats closed") == []
    finally:
        await nc.close()
