"""Resolution on the embedded store: pure enough to need no server."""

import pytest

from mosaic.events.v1 import event_pb2
from mosaic.platform.config import PlatformSettings
from identity_service import identifiers
from identity_service.resolver import Resolver
from identity_service.store import open_store


@pytest.fixture
async def resolver(tmp_path):
    store = await open_store(PlatformSettings.from_env("identity", {"MOSAIC_DATA_DIR": str(tmp_path)}))
    yield Resolver(store)
    await store.close()


def identify(**fields) -> event_pb2.Event:
    traits = fields.pop("traits", {})
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, **fields)
    event.traits.update(traits)
    return event


def test_identifiers_are_normalised_and_in_priority_order():
    event = identify(anonymous_id="a-1", user_id="u-1", traits={"email": "  Ada@Example.COM "})
    event.context.update({"device": {"id": "d-1"}})
    found = [(i.type, i.value) for i in identifiers.extract(event)]
    assert found == [("user_id", "u-1"), ("email", "ada@example.com"), ("device_id", "d-1"), ("anonymous_id", "a-1")]


async def test_anonymous_browsing_then_login_stays_one_profile(resolver):
    anonymous = await resolver.resolve(identifiers.extract(identify(anonymous_id="a-1")))
    logged_in = await resolver.resolve(identifiers.extract(identify(anonymous_id="a-1", user_id="u-1")))
    assert logged_in == anonymous
    assert await resolver.resolve(identifiers.extract(identify(user_id="u-1"))) == anonymous


async def test_the_same_event_twice_resolves_the_same_way(resolver):
    event = identify(user_id="u-9", traits={"email": "nine@example.com"})
    assert await resolver.resolve(identifiers.extract(event)) == await resolver.resolve(identifiers.extract(event))


async def test_two_strangers_get_two_profiles(resolver):
    first = await resolver.resolve(identifiers.extract(identify(user_id="u-1")))
    second = await resolver.resolve(identifiers.extract(identify(user_id="u-2")))
    assert first != second
