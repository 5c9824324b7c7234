"""The consent store's contract, on SQLite and on Cassandra."""

import uuid

from google.protobuf import timestamp_pb2

from consent_service.store import MergeRecord, Move, OutboxEntry
from mosaic.consent.v1 import consent_pb2
from mosaic.testing.scan import rows_mentioning


def decision(pid, purpose, granted, seconds, **fields) -> consent_pb2.ConsentDecision:
    return consent_pb2.ConsentDecision(
        profile_id=pid,
        purpose=purpose,
        granted=granted,
        source="api",
        decided_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=123_000_000),
        **fields,
    )


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def outbox(*names: str) -> list[OutboxEntry]:
    return [OutboxEntry(name, "consent.changed", "key", name.encode()) for name in names]


async def test_the_ledger_keeps_every_entry_oldest_first_and_the_same_entry_once(store):
    (pid,) = ids(1)
    await store.append([decision(pid, "marketing", False, 200)], [])
    await store.append([decision(pid, "marketing", True, 100)], [])  # an older decision arriving late
    await store.append([decision(pid, "marketing", True, 100)], [])
    await store.append([decision(pid, "analytics", False, 150)], [])
    ledger = await store.ledger([pid])
    assert [(d.purpose, d.decided_at.seconds, d.granted) for d in ledger] == [
        ("marketing", 100, True),
        ("analytics", 150, False),
        ("marketing", 200, False),
    ]
    assert ledger[0].decided_at.nanos == 123_000_000


async def test_an_entry_keeps_its_evidence(store):
    (pid,) = ids(1)
    proof = consent_pb2.ConsentProof(form_id="banner-7", tcf_string="CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA")
    entry = decision(
        pid,
        "advertising",
        True,
        100,
        change=consent_pb2.CONSENT_CHANGE_GRANT,
        proof=proof,
        legal_basis=consent_pb2.LEGAL_BASIS_CONSENT,
        actor="ada",
        change_id="c-1",
        jurisdiction=consent_pb2.JURISDICTION_GDPR,
        expires_at=timestamp_pb2.Timestamp(seconds=900),
    )
    await store.append([entry], [])
    (kept,) = await store.ledger([pid])
    assert kept == entry


async def test_the_ledger_of_several_profiles_is_one_sequence(store):
    a, b = ids(2)
    await store.append([decision(a, "marketing", True, 300), decision(b, "marketing", False, 100)], [])
    await store.append([decision(b, "analytics", True, 200)], [])
    assert [(d.profile_id, d.decided_at.seconds) for d in await store.ledger([a, b])] == [(b, 100), (b, 200), (a, 300)]
    assert await store.ledger([]) == []


async def test_the_ledgers_profiles_are_paged_each_once(store):
    pids = ids(5)
    for pid in pids:
        await store.append([decision(pid, "marketing", True, 100), decision(pid, "analytics", False, 100)], [])
    seen, cursor, pages = [], "", 0
    while True:
        page, cursor = await store.ledger_profiles(cursor, 2)
        assert len(page) <= 2
        seen += page
        pages += 1
        if not cursor:
            break
    assert set(pids) <= set(seen) and len(seen) == len(set(seen)) and pages >= 3


async def test_a_merge_points_the_moved_profiles_at_the_survivor_and_its_split_points_them_back(store):
    survivor, merged, earlier = ids(3)
    assert await store.head(merged) == merged and await store.members(survivor) == [survivor]
    first = MergeRecord(str(uuid.uuid4()), merged, (Move(earlier, earlier),), split=False)
    await store.apply_merge(first, [])
    record = MergeRecord(str(uuid.uuid4()), survivor, (Move(merged, merged), Move(earlier, merged)), split=False)
    await store.apply_merge(record, outbox("m1"))
    assert await store.head(earlier) == survivor and await store.head(merged) == survivor
    assert sorted(await store.members(survivor)) == sorted([survivor, merged, earlier])
    assert (await store.members(survivor))[0] == survivor
    assert await store.merge_record(record.merge_id) == record
    await store.apply_split(record, outbox("s1"))
    assert await store.head(merged) == merged and await store.head(earlier) == merged
    assert await store.members(survivor) == [survivor]
    assert sorted(await store.members(merged)) == sorted([merged, earlier])
    assert (await store.merge_record(record.merge_id)).split is True
    assert await store.merge_record("never") is None


async def test_the_outbox_holds_what_was_written_with_the_change_until_done(store):
    (pid,) = ids(1)
    names = [f"{pid}-{i}" for i in range(3)]
    await store.append([decision(pid, "marketing", True, 100)], outbox(*names))
    pending = [e for e in await store.outbox_pending() if e.message_id.startswith(pid)]
    assert sorted(e.message_id for e in pending) == names
    assert pending[0].payload == pending[0].message_id.encode() and pending[0].topic == "consent.changed"
    await store.outbox_done(names[:2])
    assert [e.message_id for e in await store.outbox_pending() if e.message_id.startswith(pid)] == names[2:]


async def test_erasing_profiles_leaves_no_row_that_names_them(store):
    from mosaic.testing.scan import rows_mentioning

    ada, old, other = ids(3)
    await store.append(
        [
            decision(ada, "marketing", True, 100, expires_at=timestamp_pb2.Timestamp(seconds=9_000)),
            decision(old, "analytics", False, 50),
            decision(other, "marketing", True, 100),
        ],
        [],
    )
    await store.apply_merge(MergeRecord(str(uuid.uuid4()), ada, (Move(old, old),), split=False), [])
    assert {table for table, _ in await rows_mentioning(store.db, [ada, old])} >= {
        "consent_ledger",
        "consent_heads",
        "consent_merges",
        "consent_expiries",
    }
    counts = await store.erase_profiles([ada, old])
    assert counts == {"consent_ledger": 2, "consent_heads": 1, "consent_merges": 1}
    assert await rows_mentioning(store.db, [ada, old]) == []
    assert len(await store.ledger([other])) == 1
    assert await store.erase_profiles([ada, old]) == {"consent_ledger": 0, "consent_heads": 0, "consent_merges": 0}


async def test_a_privacy_request_is_stored_once_with_its_receipts_and_export_parts(store):
    from mosaic.consent.v1 import privacy_pb2

    (rid,) = ids(1)
    request = privacy_pb2.PrivacyRequest(
        request_id=rid,
        kind=privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT,
        person_id="p",
        participants=["consent", "profile"],
        state=privacy_pb2.PRIVACY_REQUEST_STATE_PENDING,
    )
    assert await store.put_request(request, outbox(f"{rid}-announce")) is True
    assert await store.put_request(request, []) is False
    assert f"{rid}-announce" in [e.message_id for e in await store.outbox_pending()]
    await store.put_receipt(rid, "profile", 1, None, '{"events": [2]}', [])
    summary = privacy_pb2.PrivacyReceiptSummary(participant="profile", exported={"events": 2})
    await store.put_receipt(rid, "profile", 0, summary, '{"events": [1]}', [])
    await store.put_receipt(rid, "profile", 0, summary, '{"events": [1]}', [])  # redelivered
    stored = await store.request(rid)
    assert list(stored.receipts) == [summary] and stored.state == privacy_pb2.PRIVACY_REQUEST_STATE_PENDING
    assert sorted(await store.export_parts(rid)) == [
        ("profile", 0, '{"events": [1]}'),
        ("profile", 1, '{"events": [2]}'),
    ]
    stored.state = privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED
    await store.complete_request(stored)
    again = await store.request(rid)
    assert again.state == privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED and len(again.receipts) == 1
    assert rid in [r.request_id for r in await store.requests()]
    assert await store.request("never") is None


async def test_an_expiring_grant_is_due_once_its_time_has_come(store):
    from consent_service.store import Expiry

    (pid,) = ids(1)
    now = 1_800_000_000
    await store.append(
        [
            decision(pid, "marketing", True, now - 100, expires_at=timestamp_pb2.Timestamp(seconds=now - 10)),
            decision(pid, "analytics", True, now - 100, expires_at=timestamp_pb2.Timestamp(seconds=now + 10)),
            decision(pid, "advertising", False, now - 100),
        ],
        [],
    )
    due = [e for e in await store.due_expiries(now * 1_000_000) if e.profile_id == pid]
    assert due == [Expiry((now - 10) * 1_000_000, pid, "marketing")]
    await store.expiry_done(due)
    assert [e for e in await store.due_expiries(now * 1_000_000) if e.profile_id == pid] == []
    later = [e.purpose for e in await store.due_expiries((now + 20) * 1_000_000) if e.profile_id == pid]
    assert later == ["analytics"]


async def test_erased_profile_ids_keep_a_tombstone_and_never_the_id(store):
    erased, kept = str(uuid.uuid4()), str(uuid.uuid4())
    await store.record_erasures([erased])
    await store.record_erasures([erased])  # an erasure done again
    assert await store.erased([erased, kept]) == {erased}
    assert await store.erased([]) == set()
    assert await rows_mentioning(store.db, [erased]) == []
