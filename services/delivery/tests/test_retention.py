"""Retention on real services: each kind's schedule from RetentionService and `mosaic privacy
retention`, and the embedded store's sweeper removing a dead letter once its retention is over."""

import argparse
import json

import grpc
import pytest

from mosaic.cli import privacy_commands
from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.platform.config import ConfigError
from mosaic.retention.v1 import retention_service_pb2, retention_service_pb2_grpc
from mosaic.testing.plugin import eventually
from mosaic.testing.receivers import WebhookReceiver
from profile_service.config import Settings as ProfileSettings


async def retention_of(port: int) -> retention_service_pb2.GetRetentionResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = retention_service_pb2_grpc.RetentionServiceStub(channel)
        return await stub.GetRetention(retention_service_pb2.GetRetentionRequest())


async def test_each_kind_is_reported_with_its_schedule_and_the_cli_prints_them_all(service, profile_service, capsys):
    delivery = await retention_of(service.port)
    assert (delivery.service, delivery.store) == ("delivery", "embedded")
    kinds = {k.kind: k for k in delivery.kinds}
    assert kinds["deliveries"].retention.seconds == 180 * 86400 and kinds["deliveries"].tables == ["delivery_log"]
    assert kinds["dead_letters"].retention.seconds == 30 * 86400
    assert kinds["dead_letters"].setting == "MOSAIC_DELIVERY_DEAD_LETTER_DAYS"
    assert "sweeper" in kinds["deliveries"].mechanism and kinds["deliveries"].HasField("expires_before")
    await eventually(lambda: _swept_once(service.port))  # the sweeper runs at start, then every hour
    profile = await retention_of(profile_service.port)
    kept = {k.kind: k for k in profile.kinds}
    assert kept["events"].retention.seconds == 90 * 86400
    assert not kept["snapshots"].HasField("retention") and not kept["snapshots"].HasField("expires_before")
    assert kept["snapshots"].mechanism == "kept until the person is erased"

    args = argparse.Namespace(
        verb="retention",
        profile_address=f"127.0.0.1:{profile_service.port}",
        delivery_address=f"127.0.0.1:{service.port}",
    )
    assert await privacy_commands.show_retention(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # not a terminal: JSON
    rows = {(line["service"], line["kind"], line.get("retention")) for line in lines}
    expected = {
        ("profile", "events", "7776000s"),
        ("profile", "snapshots", None),
        ("delivery", "dead_letters", "2592000s"),
    }
    assert expected <= rows
    assert any(line["setting"] == "MOSAIC_PROFILE_SNAPSHOT_DAYS" for line in lines)


async def _swept_once(port: int) -> bool:
    return all(k.HasField("last_swept") for k in (await retention_of(port)).kinds)


@pytest.fixture
def refusing_receiver():
    receiver = WebhookReceiver(status=404).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def short_retention(delivery_env):
    # Dead letters kept about two seconds, swept every second.
    delivery_env["MOSAIC_DELIVERY_DEAD_LETTER_DAYS"] = str(2 / 86400)
    delivery_env["MOSAIC_RETENTION_SWEEP_SECONDS"] = "1"


async def test_a_dead_letter_past_its_retention_is_swept_away(
    short_retention, stub, service, membership, consent, refusing_receiver
):
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="gone",
                webhook_url=refusing_receiver.url("/gone"),
                segment_id="vip",
                purpose="marketing",
            )
        )
    )
    await consent("p-1")
    await membership("vip", "p-1")
    await eventually(lambda: _letters(stub))  # a 404 is refused: a dead letter at once

    async def swept() -> bool:
        kinds = {k.kind: k for k in (await retention_of(service.port)).kinds}
        return kinds["dead_letters"].swept_rows == 1 and not await _letters(stub)

    await eventually(swept)
    [record] = (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id="p-1"))).deliveries
    assert record.status == delivery_pb2.DELIVERY_STATUS_DEAD_LETTERED, "the delivery log keeps its own retention"


async def _letters(stub):
    return list((await stub.ListDeadLetters(pb.ListDeadLettersRequest())).dead_letters)


def test_a_retention_too_short_for_what_depends_on_it_is_refused_naming_the_variable():
    with pytest.raises(ConfigError) as caught:
        ProfileSettings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_PROFILE_SNAPSHOT_DAYS": "3"})
    assert caught.value.variable == "MOSAIC_PROFILE_SNAPSHOT_DAYS" and "at least 14 days" in caught.value.rule
    from delivery_service.config import Settings

    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_CONSENT_ADDRESS": "x:1", "MOSAIC_DELIVERY_LOG_DAYS": "2"})
    assert caught.value.variable == "MOSAIC_DELIVERY_LOG_DAYS" and "at least 8 days" in caught.value.rule
