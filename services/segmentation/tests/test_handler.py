"""The profile.updated handler on the embedded store and a real nats-server."""

import pytest
from google.protobuf import struct_pb2

from mosaic.events.v1 import profile_updated_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.profile.v1 import profile_pb2
from mosaic.segmentation.v1 import segment_pb2
from segmentation_service.app import ProfileUpdatedHandler, SegmentCatalog
from segmentation_service.store import open_store

DELIVERY = Delivery("profile.updated.0", 0, 1, 1, "")


@pytest.fixture
async def handler(make_settings):
    settings = make_settings("segmentation")
    store = await open_store(settings)
    bus = await Bus.connect(settings.nats_url, "segmentation", settings.partitions)
    await bus.ensure_streams()
    await store.create(segment_pb2.Segment(segment_id="repeat-buyers", name="Repeat buyers", condition=segment_pb2.Condition(
        trait=segment_pb2.TraitCondition(trait="orders", operator=segment_pb2.OPERATOR_GREATER_THAN,
                                         value=struct_pb2.Value(number_value=1)))))
    yield ProfileUpdatedHandler(store, SegmentCatalog(store), bus)
    await bus.close()
    await store.close()


def update(version: int, orders: int, path: str = "computed_traits.orders") -> profile_updated_pb2.ProfileUpdated:
    message = profile_updated_pb2.ProfileUpdated(profile_id="p-1", version=version, changes=[
        profile_pb2.FieldChange(path=path, new_value=struct_pb2.Value(number_value=orders))])
    message.traits.update({"orders": orders})
    return message


async def entries(handler) -> list[segment_membership_pb2.SegmentMembershipChanged]:
    info = await handler.bus._js.stream_info(topics.SEGMENT_MEMBERSHIP.stream)
    found = []
    for seq in range(1, info.state.messages + 1):
        raw = await handler.bus._js.get_msg(topics.SEGMENT_MEMBERSHIP.stream, seq)
        found.append(segment_membership_pb2.SegmentMembershipChanged.FromString(raw.data))
    return found


async def test_a_computed_trait_change_moves_a_profile_into_a_segment_once(handler):
    await handler(update(1, 1), DELIVERY)
    assert await entries(handler) == []
    await handler(update(2, 2), DELIVERY)
    await handler(update(2, 2), DELIVERY)  # redelivered
    [entered] = await entries(handler)
    assert entered.change == segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED and entered.profile_version == 2
    assert await handler.store.membership("repeat-buyers", "p-1") == (True, 2)


async def test_a_change_to_an_unread_trait_evaluates_nothing(handler):
    await handler(update(1, 5, path="traits.city"), DELIVERY)
    assert await entries(handler) == []
    assert await handler.store.membership("repeat-buyers", "p-1") == (False, 0)
