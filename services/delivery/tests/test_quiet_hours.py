"""Quiet hours end to end: a send in the person's quiet hours (their time zone trait, from the
real profile service) is held in the store, not dropped, and queued when the window ends, to a
real HTTP receiver; a held send survives a restart."""

from datetime import datetime, timedelta, timezone

import grpc
import pytest

from delivery_service.schedule import zone_named
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2_grpc
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.events.v1 import segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.testing.plugin import eventually

Status = delivery_pb2.DeliveryStatus


@pytest.fixture
def fast_sweeps(delivery_env):
    delivery_env["MOSAIC_DELIVERY_SWEEP_SECONDS"] = "0.2"


def quiet_now(zone_name: str, seconds_left: float) -> tuple[delivery_pb2.QuietHours, datetime]:
    """Quiet hours in `zone_name` that began an hour ago and end `seconds_left` from now (whole
    seconds); the end, in UTC."""
    local = datetime.now(zone_named(zone_name)).replace(microsecond=0)
    end = local + timedelta(seconds=seconds_left)
    window = delivery_pb2.QuietHours(start=f"{local - timedelta(hours=1):%H:%M:%S}", end=f"{end:%H:%M:%S}")
    return window, end.astimezone(timezone.utc)


def destination(receiver, quiet: delivery_pb2.QuietHours) -> delivery_pb2.Destination:
    return delivery_pb2.Destination(
        destination_id="offers",
        webhook_url=receiver.url("/offers"),
        purpose="marketing",
        triggers=[
            delivery_pb2.Trigger(kind=delivery_pb2.TRIGGER_KIND_SEGMENT_ENTERED, segment_id="vip", quiet_hours=quiet)
        ],
    )


async def record(stub, profile_id):
    [found] = (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=profile_id))).deliveries
    return found


async def status_is(stub, profile_id, status):
    try:
        found = await record(stub, profile_id)
    except ValueError:
        return False
    return found.status == status and found


async def test_a_send_in_the_persons_quiet_hours_is_held_until_they_end_in_their_zone(
    with_profiles, fast_sweeps, set_traits, stub, membership, consent, webhook_receiver
):
    # Kiritimati is UTC+14: its quiet hours are not UTC's, nor those of a zone no one knows.
    await set_traits("p-night", timezone="Pacific/Kiritimati")
    await set_traits("p-utc", plan="pro")
    await set_traits("p-mars", timezone="Mars/Olympus")
    for person in ("p-night", "p-utc", "p-mars"):
        await consent(person)
    quiet, end = quiet_now("Pacific/Kiritimati", seconds_left=12)
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination(webhook_receiver, quiet)))
    for person in ("p-night", "p-utc", "p-mars"):
        await membership("vip", person)

    held = await eventually(lambda: status_is(stub, "p-night", Status.DELIVERY_STATUS_SCHEDULED))
    assert held.not_before.ToDatetime(timezone.utc) == end and "Pacific/Kiritimati" in held.detail
    assert "p-night" not in [r.body["profile_id"] for r in webhook_receiver.requests]
    for person in ("p-utc", "p-mars"):  # the default zone (UTC) is not quiet now: sent at once
        await eventually(lambda person=person: status_is(stub, person, Status.DELIVERY_STATUS_SENT))

    sent = await eventually(lambda: status_is(stub, "p-night", Status.DELIVERY_STATUS_SENT), timeout=60)
    assert sent.updated_at.ToDatetime(timezone.utc) >= end
    assert sorted(r.body["profile_id"] for r in webhook_receiver.requests) == ["p-mars", "p-night", "p-utc"]


async def test_a_held_send_survives_a_restart_and_goes_once(
    fast_sweeps, consent, webhook_receiver, replicas, nats_server
):
    first = await replicas.start()
    quiet, end = quiet_now("UTC", seconds_left=10)  # no traits: the default zone, UTC
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination(webhook_receiver, quiet)))
        await consent("p-1")
        bus = await Bus.connect(nats_server.url, "test", 2)
        try:
            change = segment_membership_pb2.SegmentMembershipChanged(
                segment_id="vip",
                profile_id="p-1",
                profile_version=1,
                change=segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED,
            )
            await bus.publish(topics.SEGMENT_MEMBERSHIP, "p-1", change, "vip:p-1:1")
            await eventually(lambda: status_is(stub, "p-1", Status.DELIVERY_STATUS_SCHEDULED))
        finally:
            await bus.close()
    await replicas.stop(first)

    second = await replicas.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        sent = await eventually(lambda: status_is(stub, "p-1", Status.DELIVERY_STATUS_SENT), timeout=60)
    assert sent.updated_at.ToDatetime(timezone.utc) >= end
    assert [r.body["profile_id"] for r in webhook_receiver.requests] == ["p-1"]
