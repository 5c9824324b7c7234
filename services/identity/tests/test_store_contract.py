"""The identity store's contract, on SQLite and on Cassandra."""

import asyncio
import uuid

from identity_service.store import Claim, Link, Member, OutboxEntry
from mosaic.identity.v1 import identity_pb2


def unique() -> str:
    return uuid.uuid4().hex


async def test_an_unknown_identifier_has_no_claim(store):
    assert await store.claims([("email", f"{unique()}@example.com")]) == {}


async def test_the_first_claim_wins_and_later_claims_see_it(store):
    key = ("user_id", unique())
    first = Claim("p-1", "e-1", 1_000, "web")
    assert await store.claim(key, first) == first
    assert await store.claim(key, Claim("p-2", "e-2", 2_000, "crm")) == first
    assert (await store.claims([key]))[key] == first


async def test_racing_claims_agree_on_one_owner(store):
    key = ("anonymous_id", unique())
    winners = await asyncio.gather(*(store.claim(key, Claim(f"p-{i}", f"e-{i}", i, "")) for i in range(8)))
    assert len({w.profile_id for w in winners}) == 1


async def test_identifier_types_are_separate_namespaces(store):
    value = unique()
    await store.claim(("user_id", value), Claim("p-1", "e", 1, ""))
    assert await store.claims([("anonymous_id", value)]) == {}


async def test_claims_and_profiles_of_many_keys_at_once_are_each_ones(store):
    # More than a read statement names (SQLite chunks them), some claimed and some not.
    keys = [("email", f"{unique()}@example.com") for _ in range(450)]
    claimed = {key: Claim(f"p-{i}", f"e-{i}", i, "web") for i, key in enumerate(keys) if i % 3 == 0}
    await asyncio.gather(*(store.claim(key, claim) for key, claim in claimed.items()))
    assert await store.claims([*keys, keys[0]]) == claimed
    profiles = [unique() for _ in range(450)]
    for index, profile in enumerate(profiles[::2]):
        await store.create_locked(profile, index, f"e-{index}", "me", lease_until=1_000)
    found = await store.profiles(profiles)
    assert set(found) == set(profiles[::2])
    assert all(found[p].created_at == i and found[p].holder == "me" for i, p in enumerate(profiles[::2]))


async def test_a_lock_is_exclusive_until_released_or_its_lease_runs_out(store):
    profile = unique()
    assert await store.create_locked(profile, 5, "e-1", "me", lease_until=1_000)
    assert not await store.create_locked(profile, 6, "e-2", "other", lease_until=1_000)
    assert await store.lock(profile, "other", now=500, lease_until=2_000) == (False, "")
    assert await store.lock(profile, "other", now=1_001, lease_until=2_000) == (True, "")  # lease over
    await store.unlock(profile, "me")  # not the holder any more: no effect
    assert await store.lock(profile, "third", now=1_500, lease_until=3_000) == (False, "")
    await store.unlock(profile, "other")
    assert await store.lock(profile, "third", now=1_500, lease_until=3_000) == (True, "")
    assert await store.lock(unique(), "me", now=0, lease_until=1) == (False, None)


async def test_only_the_holder_merges_and_a_merged_profile_cannot_be_locked(store):
    loser, survivor = unique(), unique()
    await store.create_locked(loser, 1, "e", "me", lease_until=10**13)
    assert not await store.merge_into(loser, survivor, "m-1", holder="someone else")
    assert await store.merge_into(loser, survivor, "m-1", holder="me")
    row = (await store.profiles([loser]))[loser]
    assert (row.merged_into, row.merge_id, row.holder) == (survivor, "m-1", "")
    assert await store.lock(loser, "me", now=10**13, lease_until=10**13 + 1) == (False, survivor)
    assert not await store.unmerge(loser, "not-its-survivor", never_merge=survivor)
    assert await store.unmerge(loser, survivor, never_merge=survivor)
    row = (await store.profiles([loser]))[loser]
    assert (row.merged_into, row.never_merge) == ("", frozenset({survivor}))


async def test_members_children_and_merge_records_round_trip(store):
    profile, child = unique(), unique()
    await store.add_members(profile, [Member("email", "a@example.com", 10, "e-1", "web")])
    await store.add_members(profile, [Member("email", "a@example.com", 10, "e-1", "web")])  # replayed
    await store.add_members(profile, [Member("user_id", "u", 11, "e-2", "web")])
    await store.remove_member(profile, ("user_id", "u"))
    assert (await store.members([profile]))[profile] == [Member("email", "a@example.com", 10, "e-1", "web")]
    await store.add_child(profile, child)
    assert await store.children(profile) == [child]
    await store.remove_child(profile, child)
    assert await store.children(profile) == []
    record = identity_pb2.MergeRecord(
        merge_id=unique(), survivor_profile_id=profile, merged_profile_id=child, rule="manual"
    )
    await store.save_merge(record)
    assert await store.merges_of(child) == [record] == await store.merges_of(profile)
    assert await store.merge(record.merge_id) == record


async def test_the_latest_sighting_wins_whatever_the_arrival_order(store):
    key = ("device_id", unique())
    other = ("email", f"{unique()}@example.com")
    home, elsewhere = f"p-{unique()}", f"p-{unique()}"
    await store.touch_many({key: (home, 2_000), other: (home, 500), ("user_id", unique()): (elsewhere, 9)})
    await store.touch_many({key: (home, 1_000)})
    assert await store.last_seen([home]) == {key: 2_000, other: 500}


async def test_links_come_back_in_event_time_order(store):
    marker = unique()
    two_hours_on = 2 * 3_600_000 + 500  # links are kept by the hour on Cassandra
    links = [
        Link(at, f"{marker}-{at}", (("anonymous_id", f"{marker}-{at}"), ("email", "x")))
        for at in (3_000, two_hours_on, 1_000, 2_000)
    ]
    await store.record_links(links[:2])
    await store.record_links(links[1:])  # one of them again: recorded once
    mine = [link for link in await store.links(100_000) if link.event_id.startswith(marker)]
    assert mine == sorted(links, key=lambda link: link.at)


async def test_the_outbox_keeps_entries_until_done(store):
    entry = OutboxEntry(f"{unique()}/h", "identity.merged", "p", b"payload")
    await store.outbox_put(entry)
    assert entry in await store.outbox_pending(1000)
    await store.outbox_done(entry.message_id)
    assert entry not in await store.outbox_pending(1000)


async def test_rules_are_replaced_only_from_the_version_in_force(store):
    first = identity_pb2.IdentityRules(max_merges=7, version=1)
    current = await store.load_rules()
    base = current.version if current else 0
    first.version = base + 1
    assert await store.save_rules(first, base)
    assert not await store.save_rules(identity_pb2.IdentityRules(version=base + 1), base)
    assert (await store.load_rules()).max_merges == 7
