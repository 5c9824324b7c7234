"""The delivery store's contract, on SQLite and on Cassandra."""

import time
import uuid

import pytest

from delivery_service.store import open_store
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.testing.plugin import eventually


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
