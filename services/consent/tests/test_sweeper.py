"""The sweeper on each store: lapsed grants get their expiry entry once, and a request nobody
answered is announced again."""

import uuid

import pytest
from google.protobuf import timestamp_pb2

from consent_service.cache import ConsentCache
from consent_service.ledger import Ledger
from consent_service.outbox import Relay
from consent_service.store import timestamp
from consent_service.sweeper import Sweeper
from mosaic.consent.v1 import consent_pb2, privacy_pb2
from mosaic.platform.consent import DEFAULT_PURPOSES, parse

NOW_US = 1_800_000_000 * 1_000_000


@pytest.fixture
def sweeper(store):
    ledger = Ledger(store, parse(DEFAULT_PURPOSES), consent_pb2.JURISDICTION_GDPR, clock=lambda: NOW_US)
    return Sweeper(
        store, ledger, ConsentCache(ledger.view), Relay(store, None), announce_after=600, clock=lambda: NOW_US
    )


def grant(pid: str, purpose: str, at_s: int, until_s: int | None = None) -> consent_pb2.ConsentDecision:
    d = consent_pb2.ConsentDecision(
        profile_id=pid, purpose=purpose, granted=True, decided_at=timestamp_pb2.Timestamp(seconds=at_s)
    )
    if until_s is not None:
        d.expires_at.FromSeconds(until_s)
    return d


async def test_a_lapsed_grant_gets_its_expiry_entry_once_and_a_renewed_one_none(store, sweeper):
    pid = str(uuid.uuid4())
    now_s = NOW_US // 1_000_000
    ledger = sweeper.ledger
    await ledger.record(
        [
            ledger.normalise(grant(pid, "marketing", now_s - 100, now_s - 10)),
            ledger.normalise(grant(pid, "analytics", now_s - 100, now_s - 10)),
            ledger.normalise(grant(pid, "analytics", now_s - 5)),
        ]
    )  # renewed since, without end
    assert await sweeper.expire() >= 1
    assert await sweeper.expire() == 0
    entries = [(d.purpose, d.change, d.decided_at.seconds) for d in await store.ledger([pid])]
    assert ("marketing", consent_pb2.CONSENT_CHANGE_EXPIRE, now_s - 10) in entries
    assert [e for e in entries if e[1] == consent_pb2.CONSENT_CHANGE_EXPIRE] == [
        ("marketing", consent_pb2.CONSENT_CHANGE_EXPIRE, now_s - 10)
    ]
    view = await ledger.view(pid)
    assert ledger.state(view, ledger.purposes["marketing"]).reason == "expired"
    assert ledger.state(view, ledger.purposes["analytics"]).granted


async def test_a_request_nobody_answered_is_announced_again(store, sweeper):
    rid = str(uuid.uuid4())
    old = privacy_pb2.PrivacyRequest(
        request_id=rid,
        kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE,
        person_id="p",
        state=privacy_pb2.PRIVACY_REQUEST_STATE_PENDING,
        requested_at=timestamp(NOW_US - 3600_000_000),
    )
    fresh = privacy_pb2.PrivacyRequest(
        request_id=rid + "-new",
        kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE,
        person_id="p",
        state=privacy_pb2.PRIVACY_REQUEST_STATE_PENDING,
        requested_at=timestamp(NOW_US),
    )
    assert await store.put_request(old, []) and await store.put_request(fresh, [])
    await sweeper.announce_again()
    pending = {e.message_id for e in await store.outbox_pending()}
    assert f"privacy:{rid}" in pending and f"privacy:{rid}-new" not in pending


async def test_an_export_document_is_deleted_once_its_retention_is_over(store, sweeper):
    rid = str(uuid.uuid4())
    day_us = 86_400 * 1_000_000
    request = privacy_pb2.PrivacyRequest(
        request_id=rid,
        kind=privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT,
        person_id="p",
        state=privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED,
        completed_at=timestamp(NOW_US - 31 * day_us),
    )
    fresh = privacy_pb2.PrivacyRequest(
        request_id=rid + "-new",
        kind=privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT,
        person_id="p",
        state=privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED,
        completed_at=timestamp(NOW_US - day_us),
    )
    for r in (request, fresh):
        await store.put_request(r, [])
        await store.put_receipt(r.request_id, "profile", 0, None, '{"events": [1]}', [])
    assert await sweeper.delete_old_exports() >= 1
    assert (
        await store.export_parts(rid) == [] and (await store.request(rid)).export_deleted_at.seconds == NOW_US // 10**6
    )
    assert await store.export_parts(rid + "-new") == [("profile", 0, '{"events": [1]}')]
    assert await sweeper.delete_old_exports() == 0
