"""Fixtures of the consent tests."""

import pytest

from consent_service.store import open_store


@pytest.fixture
async def store(store_settings):
    """A consent store on each backend (see mosaic.testing's store_settings)."""
    store = await open_store(store_settings)
    yield store
    await store.close()
