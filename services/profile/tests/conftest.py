"""Fixtures shared by the profile service's tests."""

import pytest

from mosaic.platform.bus import Bus
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.profiles import Profiles
from profile_service.store import open_store


@pytest.fixture
async def profiles(make_settings):
    platform = make_settings("profile")
    store = await open_store(platform)
    bus = await Bus.connect(platform.nats_url, "profile", platform.partitions)
    await bus.ensure_streams()
    yield Profiles(
        store,
        ProfileCache(100, platform.partitions, range(platform.partitions)),
        bus,
        Settings(platform, (), 90, 90, 5, 100),
    )
    await bus.close()
    await store.close()
