"""Fixtures of the identity tests."""

import pytest

from identity_service.store import open_store


@pytest.fixture
async def store(store_settings):
    """An identity store on each backend (see mosaic.testing's store_settings)."""
    store = await open_store(store_settings)
    yield store
    await store.close()
