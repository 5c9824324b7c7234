"""The delivery store's contract, on SQLite and on Cassandra."""

import time
import uuid

import pytest

from delivery_service.privacy import ErasedPeople
from delivery_service.store import open_store
from delivery_service.store.model import erasure_key
from mosaic.consent.v1 import privacy_pb2
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2
from mosaic.events.v1 import privacy_request_pb2
from mosaic.platform import topics
from mosaic.platform.errors import AlreadyExists
from mosaic.testing.plugin import eventually
from mosaic.testing.scan import rows_mentioning


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


def letter(
    destination_id: str, delivery_id: str, error: str = "HTTP 500", profile_id: str = "p"
) -> delivery_pb2.DeadLetter:
    record = delivery_pb2.Delivery(
        delivery_id=delivery_id,
        destination_id=destination_id,
        profile_id=profile_id,
        status=delivery_pb2.DELIVERY_STATUS_DEAD_LETTERED,
    )
    return delivery_pb2.DeadLetter(
        delivery=record,
        last_error=error,
        job=delivery_pb2.DeliveryJob(delivery_id=delivery_id, destination_id=destination_id),
    )


async def test_a_destination_id_can_be_taken_once(store):
    destination_id = f"d-{uuid.uuid4().hex[:8]}"
    await store.create_destination(delivery_pb2.Destination(destination_id=destination_id, name="first"))
    with pytest.raises(AlreadyExists):
        await store.create_destination(delivery_pb2.Destination(destination_id=destination_id, name="second"))
    assert destination_id in {d.destination_id for d in await store.destinations()}


async def test_a_deleted_destination_is_gone_and_its_id_free_again(store):
    destination_id = f"d-{uuid.uuid4().hex[:8]}"
    await store.create_destination(delivery_pb2.Destination(destination_id=destination_id))
    await store.delete_destination(destination_id)
    assert destination_id not in {d.destination_id for d in await store.destinations()}
    await store.create_destination(delivery_pb2.Destination(destination_id=destination_id, name="again"))


async def test_a_delivery_is_found_by_its_idempotency_key(store):
    pid = str(uuid.uuid4())
    assert await store.delivery(pid, "hook:vip:1") is None
    record = delivery_pb2.Delivery(delivery_id="hook:vip:1", profile_id=pid, status=delivery_pb2.DELIVERY_STATUS_SENT)
    await store.save_delivery(record)
    await store.save_delivery(record)
    assert (await store.delivery(pid, "hook:vip:1")).status == delivery_pb2.DELIVERY_STATUS_SENT
    assert len(await store.deliveries(pid)) == 1


async def test_deliveries_saved_together_each_keep_their_latest_status(store):
    people = [str(uuid.uuid4()) for _ in range(23)]
    queued = [
        delivery_pb2.Delivery(delivery_id=f"h:{p}", profile_id=p, status=delivery_pb2.DELIVERY_STATUS_QUEUED)
        for p in people
    ]
    await store.save_deliveries(queued)
    sent = [
        delivery_pb2.Delivery(delivery_id=f"h:{p}", profile_id=p, status=delivery_pb2.DELIVERY_STATUS_SENT)
        for p in people
    ]
    await store.save_deliveries(sent)
    for p in people:
        assert [d.status for d in await store.deliveries(p)] == [delivery_pb2.DELIVERY_STATUS_SENT]


async def test_dead_letters_page_by_destination_in_delivery_id_order(store):
    destination_id = f"d-{uuid.uuid4().hex[:8]}"
    for n in (3, 1, 4, 0, 2):
        await store.put_dead_letter(letter(destination_id, f"x:{n}"))
    await store.put_dead_letter(letter(f"other-{destination_id}", "x:9"))
    first = await store.dead_letters(destination_id, "", 2)
    assert [d.delivery.delivery_id for d in first] == ["x:0", "x:1"]
    rest = await store.dead_letters(destination_id, first[-1].delivery.delivery_id, 10)
    assert [d.delivery.delivery_id for d in rest] == ["x:2", "x:3", "x:4"]
    assert rest[0].job.delivery_id == "x:2" and rest[0].last_error == "HTTP 500"


async def test_a_dead_letter_is_replaced_by_its_key_and_deleted(store):
    destination_id = f"d-{uuid.uuid4().hex[:8]}"
    await store.put_dead_letter(letter(destination_id, "x:1", "HTTP 500"))
    await store.put_dead_letter(letter(destination_id, "x:1", "HTTP 503"))
    assert (await store.dead_letter(destination_id, "x:1")).last_error == "HTTP 503"
    await store.delete_dead_letter(letter(destination_id, "x:1"))
    assert await store.dead_letter(destination_id, "x:1") is None
    assert await store.dead_letters(destination_id, "", 10) == []


async def test_erasing_a_person_leaves_no_delivery_or_dead_letter_of_theirs(store):
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    destination_id = f"d-{uuid.uuid4().hex[:8]}"
    await store.save_deliveries(
        [delivery_pb2.Delivery(delivery_id=f"h:{n}", profile_id=p) for p in (gone, kept) for n in range(3)]
    )
    await store.put_dead_letter(letter(destination_id, f"h:{gone}", profile_id=gone))
    await store.put_dead_letter(letter(f"other-{destination_id}", f"h2:{gone}", profile_id=gone))
    await store.put_dead_letter(letter(destination_id, f"h:{kept}", profile_id=kept))
    assert await store.erase_person(gone) == 5
    assert await store.deliveries(gone) == []
    assert await store.dead_letter(destination_id, f"h:{gone}") is None
    assert await store.dead_letters(f"other-{destination_id}", "", 10) == []
    assert len(await store.deliveries(kept)) == 3
    assert [d.delivery.profile_id for d in await store.dead_letters(destination_id, "", 10)] == [kept]
    assert await store.erase_person(gone) == 0  # a second erasure (a redelivered request) is harmless


async def test_an_erasure_leaves_a_tombstone_that_does_not_name_the_person(store):
    gone, again, kept = (str(uuid.uuid4()) for _ in range(3))
    assert await store.erased([gone, kept]) == set()
    await store.record_erasure(gone)
    await store.record_erasure(again)
    await store.record_erasure(gone)  # a redelivered request: harmless
    assert await store.erased([gone, kept, again]) == {gone, again}
    assert await store.erased([]) == set()
    assert await rows_mentioning(store.db, [gone, again]) == []


async def test_a_profiles_deliveries_page_by_delivery_id(store):
    pid = f"p-{uuid.uuid4().hex}"
    ids = [f"d{i:02d}" for i in (4, 0, 3, 1, 2)]
    await store.save_deliveries(
        [delivery_pb2.Delivery(delivery_id=d, profile_id=pid, destination_id="crm") for d in ids]
    )
    assert [d.delivery_id for d in await store.deliveries(pid, "", 2)] == ["d00", "d01"]
    assert [d.delivery_id for d in await store.deliveries(pid, "d01", 2)] == ["d02", "d03"]
    assert [d.delivery_id for d in await store.deliveries(pid, "d03", 2)] == ["d04"]
    assert [d.delivery_id for d in await store.deliveries(pid)] == sorted(ids)


async def test_deliveries_and_dead_letters_expire_with_their_retention(store_settings):
    # A few seconds, long enough to read the writes back on a busy machine.
    store = await open_store(store_settings, log_ttl=4, dead_letter_ttl=4)
    try:
        pid, destination = f"p-{uuid.uuid4().hex[:8]}", f"d-{uuid.uuid4().hex[:8]}"
        record = delivery_pb2.Delivery(delivery_id="x1", destination_id=destination, profile_id=pid)
        await store.save_delivery(record)
        await store.put_dead_letter(letter(destination, "x2", profile_id=pid))
        assert await store.delivery(pid, "x1") == record and await store.dead_letter(destination, "x2")

        async def gone() -> bool:
            return (
                await store.delivery(pid, "x1") is None
                and await store.deliveries(pid) == []
                and await store.dead_letter(destination, "x2") is None
                and await store.dead_letters(destination, "", 10) == []
            )

        await eventually(gone, timeout=60)
        if hasattr(store, "sweep"):  # the embedded store's rows go with the sweep
            assert await store.sweep(time.time_ns() // 1000) == {"deliveries": 1, "dead_letters": 1}
            assert await store.db.execute("SELECT count(*) FROM delivery_dead_letters_by_profile") == [(0,)]
    finally:
        await store.close()


async def test_without_a_retention_deliveries_are_kept(store):
    pid = f"p-{uuid.uuid4().hex[:8]}"
    await store.save_delivery(delivery_pb2.Delivery(delivery_id="k", destination_id="d", profile_id=pid))
    if hasattr(store, "sweep"):
        assert (await store.sweep((int(time.time()) + 10 * 365 * 86400) * 1_000_000))["deliveries"] == 0
    assert [d.delivery_id for d in await store.deliveries(pid)] == ["k"]


async def test_a_campaign_id_can_be_taken_once_and_deleting_it_deletes_its_run(store):
    campaign_id = f"c-{uuid.uuid4().hex[:8]}"
    await store.create_campaign(campaign_pb2.Campaign(campaign_id=campaign_id, destination_id="d"))
    with pytest.raises(AlreadyExists):
        await store.create_campaign(campaign_pb2.Campaign(campaign_id=campaign_id))
    assert await store.save_campaign_run(campaign_id, campaign_pb2.CampaignRun(owner="a"), 0)
    assert campaign_id in {c.campaign_id for c in await store.campaigns()}
    await store.delete_campaign(campaign_id)
    assert campaign_id not in {c.campaign_id for c in await store.campaigns()}
    assert campaign_id not in await store.campaign_runs()
    # An owner still holding the old version cannot write the deleted run back.
    assert not await store.save_campaign_run(campaign_id, campaign_pb2.CampaignRun(owner="a"), 1)
    assert campaign_id not in await store.campaign_runs()


async def test_a_campaign_is_changed_by_compare_and_set_on_what_the_writer_read(store):
    campaign_id = f"c-{uuid.uuid4().hex[:8]}"
    assert await store.campaign(campaign_id) is None
    await store.create_campaign(campaign_pb2.Campaign(campaign_id=campaign_id, name="first"))
    read, token = await store.campaign(campaign_id)
    paused = campaign_pb2.Campaign(campaign_id=campaign_id, name="first")
    paused.paused_at.GetCurrentTime()
    renamed = campaign_pb2.Campaign(campaign_id=campaign_id, name="renamed")
    # Two writers read the same definition: the first to write wins, the other must read again.
    assert await store.replace_campaign(paused, token)
    assert not await store.replace_campaign(renamed, token)
    again, fresh = await store.campaign(campaign_id)
    assert again == paused and fresh != token
    renamed.paused_at.CopyFrom(again.paused_at)
    assert await store.replace_campaign(renamed, fresh)
    assert [c for c in await store.campaigns() if c.campaign_id == campaign_id] == [renamed]
    # A campaign deleted meanwhile is not written back.
    _, last = await store.campaign(campaign_id)
    await store.delete_campaign(campaign_id)
    assert not await store.replace_campaign(renamed, last)
    assert await store.campaign(campaign_id) is None


async def test_a_campaign_run_is_claimed_by_one_writer_per_version(store):
    campaign_id = f"c-{uuid.uuid4().hex[:8]}"
    first = campaign_pb2.CampaignRun(owner="a", status=campaign_pb2.CAMPAIGN_RUN_STATUS_RUNNING)
    rival = campaign_pb2.CampaignRun(owner="b", status=campaign_pb2.CAMPAIGN_RUN_STATUS_RUNNING)
    assert await store.save_campaign_run(campaign_id, first, 0)
    assert not await store.save_campaign_run(campaign_id, rival, 0)  # both saw no run: one wins
    version, stored = (await store.campaign_runs())[campaign_id]
    assert (version, stored.owner) == (1, "a")
    first.members = 64
    assert await store.save_campaign_run(campaign_id, first, 1)  # the owner renews
    assert not await store.save_campaign_run(campaign_id, rival, 1)  # a stale version loses
    version, stored = (await store.campaign_runs())[campaign_id]
    assert (version, stored.owner, stored.members) == (2, "a", 64)


def held(profile_id: str, delivery_id: str, due: float) -> delivery_pb2.DeliveryJob:
    job = delivery_pb2.DeliveryJob(delivery_id=delivery_id, destination_id="d", profile_id=profile_id, text="hi")
    job.not_before.FromNanoseconds(int(due * 1e9))
    return job


async def test_held_jobs_come_due_by_partition_in_due_order_and_go_when_released(store):
    now = time.time()
    slot = 3
    people = [str(uuid.uuid4()) for _ in range(3)]
    # Due an hour ago (an earlier hour's bucket), just now, and in an hour; one on another slot.
    await store.hold(held(people[0], "h:1", now - 3600), slot)
    await store.hold(held(people[1], "h:2", now - 1), slot)
    await store.hold(held(people[2], "h:3", now + 3600), slot)
    await store.hold(held(people[0], "h:4", now - 5), slot + 1)
    due = await store.due_jobs(slot, now, 10)
    assert [j.delivery_id for j in due] == ["h:1", "h:2"] and due[0].text == "hi"
    assert [j.delivery_id for j in await store.due_jobs(slot, now, 1)] == ["h:1"]
    await store.unhold(due[0], slot)
    assert [j.delivery_id for j in await store.due_jobs(slot, now, 10)] == ["h:2"]
    assert [j.delivery_id for j in await store.due_jobs(slot, now + 7200, 10)] == ["h:2", "h:3"]
    await store.hold(held(people[1], "h:2", now - 1), slot)  # held again (a redelivery): still one
    assert [j.delivery_id for j in await store.due_jobs(slot, now, 10)] == ["h:2"]


async def test_erasing_a_person_drops_their_held_jobs(store):
    now = time.time()
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    await store.hold(held(gone, "h:gone", now - 1), 5)
    await store.hold(held(kept, "h:kept", now - 1), 5)
    assert await store.erase_person(gone) == 1
    assert [j.profile_id for j in await store.due_jobs(5, now, 10)] == [kept]


async def test_the_erased_in_memory_are_loaded_from_the_tombstones_and_read_the_store_past_their_bound(store):
    gone, again, kept = (str(uuid.uuid4()) for _ in range(3))
    for person in (gone, again):
        await store.record_erasure(person)
    assert {erasure_key(gone), erasure_key(again)} <= set(await store.erasures(1_000_000))
    assert len(await store.erasures(1)) == 1
    erased = ErasedPeople(store)
    await erased.load()  # a restart: every tombstone is known again
    assert erased.complete and erased.known(gone) and erased.known(again) and not erased.known(kept)
    assert await erased.erased(gone) and not await erased.erased(kept)
    few = ErasedPeople(store, most=1)
    await few.load()  # more tombstones than it may hold: the misses are read from the store
    assert not few.complete
    assert await few.erased(gone) and await few.erased(again) and not await few.erased(kept)
    erased.add([kept])  # heard of (Bus.listen) or recorded by this replica
    assert erased.known(kept)


async def test_a_replica_disconnected_when_an_erasure_went_out_knows_the_person_once_back(store, nats_server):
    """Its connection is down while two people are erased: one request still in
    privacy.requested, the other complete (gone from the stream, its tombstone stored by the
    replica that did delivery's part). Once back it knows both without a store read."""
    from mosaic.platform.bus import Bus
    from mosaic.testing.relay import Link

    publisher = await Bus.connect(nats_server.url, "tester", 2)
    await publisher.ensure_streams([topics.PRIVACY_REQUESTED])
    link = Link(nats_server.url)
    replica = await Bus.connect(await link.start(), "delivery", 2)
    try:
        erased = ErasedPeople(store)
        await erased.follow(replica)
        in_flight, completed = (str(uuid.uuid4()) for _ in range(2))
        link.cut()
        await eventually(lambda: not replica.connected)
        request = privacy_request_pb2.PrivacyRequested(
            request_id=f"erase-{in_flight}", kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, person_id=in_flight
        )
        await publisher.publish(topics.PRIVACY_REQUESTED, in_flight, request, request.request_id)
        await store.record_erasure(completed)
        assert not erased.known(in_flight) and not erased.known(completed)
        link.restore()
        await eventually(lambda: replica.connected)
        await eventually(lambda: erased.known(in_flight) and erased.known(completed))
    finally:
        await replica.close()
        await link.close()
        await publisher.close()
