"""The event path's root cache: pure behaviour, and what a stale entry may and may not do when
another replica (a second set of components on the same store) merges or splits."""

from __future__ import annotations

import uuid

import pytest

from identity_service import admin
from identity_service.app import components
from identity_service.config import Settings
from identity_service.resolver import RootCache
from identity_service.store import open_store
from mosaic.events.v1 import event_pb2


def test_an_entry_is_forgotten_with_its_home_or_its_root():
    cache = RootCache()
    cache.put("h1", "r")
    cache.put("h2", "r")
    cache.put("h3", "other")
    cache.forget(["r"])
    assert (cache.get("h1"), cache.get("h2"), cache.get("h3")) == (None, None, "other")
    cache.forget(["h3"])
    assert cache.get("h3") is None


def test_entries_age_out_and_the_least_recently_used_goes_first():
    cache = RootCache(size=2, max_age=0.0)
    cache.put("h1", "r")
    assert cache.get("h1") is None  # older than max_age already
    cache = RootCache(size=2)
    cache.put("h1", "r1")
    cache.put("h2", "r2")
    cache.get("h1")
    cache.put("h3", "r3")
    assert (cache.get("h1"), cache.get("h2"), cache.get("h3")) == ("r1", None, "r3")
    cache.forget(["r2"])  # its reverse entry went with it: nothing to trip over
    assert cache.get("h1") == "r1"


@pytest.fixture
async def replicas(store_settings):
    store = await open_store(store_settings)
    yield components(store, Settings(store_settings)), components(store, Settings(store_settings))
    await store.close()


def event(mid: str, **ids) -> event_pb2.Event:
    message = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=f"{mid}-{uuid.uuid4().hex}")
    if "user_id" in ids:
        message.user_id = ids["user_id"]
    if "anonymous_id" in ids:
        message.anonymous_id = ids["anonymous_id"]
    if "email" in ids:
        message.traits.update({"email": ids["email"]})
    message.timestamp.GetCurrentTime()
    return message


async def test_a_change_after_another_replicas_split_sees_the_split_not_the_cache(replicas):
    (resolver_a, _, events_a), (resolver_b, _, _) = replicas
    ns = uuid.uuid4().hex[:8]
    anon, user, email = f"{ns}-anon", f"{ns}-user", f"{ns}@example.com"
    first = (await events_a.resolve(event("m1", anonymous_id=anon))).profile_id
    second = (await events_a.resolve(event("m2", user_id=user))).profile_id
    merged = await events_a.resolve(event("m3", anonymous_id=anon, user_id=user))
    assert merged.resolution.merges, "the two profiles merge"
    survivor = merged.profile_id
    loser = ({first, second} - {survivor}).pop()
    # Replica A caches the loser's root (the survivor); replica B undoes the merge.
    assert (await events_a.resolve(event("m4", anonymous_id=anon, user_id=user))).profile_id == survivor
    assert resolver_a.root_cache.get(loser) == survivor
    await admin.split(resolver_b, merged.resolution.merges[0].merge_id, "wrong merge")
    # A change on A (a new e-mail for the loser's identifier) re-reads the roots under the
    # locks, so it lands on the restored profile, not on the survivor A had cached.
    loser_key = ("anonymous_id", anon) if loser == first else ("user_id", user)
    changed = await events_a.resolve(event("m5", **{loser_key[0]: loser_key[1]}, email=email))
    assert changed.profile_id == loser
    assert await resolver_b.lookup(("email", email)) == loser
    # What the stale entry may still do, until notice or age drops it, is answer a read with
    # the survivor, which the profile service forwards; forgetting it gives the truth.
    resolver_a.root_cache.forget([survivor])
    assert (await events_a.resolve(event("m6", **{loser_key[0]: loser_key[1]}))).profile_id == loser


async def test_a_change_after_another_replicas_merge_locks_the_survivor(replicas):
    (resolver_a, _, events_a), (resolver_b, rules_b, _) = replicas
    ns = uuid.uuid4().hex[:8]
    p1 = (await events_a.resolve(event("m1", anonymous_id=f"{ns}-a1"))).profile_id
    p2 = (await events_a.resolve(event("m2", anonymous_id=f"{ns}-a2"))).profile_id
    survivor, _ = await admin.merge_profiles(resolver_b, [p1, p2], await rules_b.get(), "same person", "")
    # A's cache still says each anonymous id is its own root; a change touching both must
    # not try to merge them again.
    changed = await events_a.resolve(event("m3", anonymous_id=f"{ns}-a1", email=f"{ns}@example.com"))
    assert changed.profile_id == survivor
    assert not changed.resolution.merges
    assert await resolver_a.lookup(("email", f"{ns}@example.com")) == survivor
