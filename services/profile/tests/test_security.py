"""The profile service with authentication on: personal data masked for callers without
`profiles:read_pii`, and every read recorded in the audit log without the data itself."""

from __future__ import annotations

import grpc
import pytest

from mosaic.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from mosaic.cli import pki as local_pki
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.server import Service
from mosaic.profile.v1 import profile_service_pb2 as pb
from mosaic.profile.v1 import profile_service_pb2_grpc
from mosaic.testing.plugin import eventually
from profile_service.app import build
from profile_service.config import Settings


@pytest.fixture
async def secured(make_settings, tmp_path, nats_server):
    pki = local_pki.ensure(tmp_path / "pki", admin_scopes=[])
    platform = make_settings("profile", MOSAIC_AUTH="required", MOSAIC_AUTH_JWKS=str(pki.jwks))
    settings = Settings(platform, (), 90, 90, 20, 1000)
    service = Service(platform, lambda runtime: build(runtime, settings))
    await service.start()
    bus = await Bus.connect(nats_server.url, "test", platform.partitions)
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id="m1", user_id="ada", source_id="crm")
    event.traits.update({"email": "ada@example.com", "plan": "pro"})
    event.timestamp.GetCurrentTime()
    await bus.publish(
        topics.EVENTS_RESOLVED,
        "p-1",
        resolved_pb2.ResolvedEvent(
            profile_id="p-1", event=event, identifiers=[identity_pb2.Identifier(type="user_id", value="ada")]
        ),
        "m1",
    )
    await bus.close()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    yield pki, channel
    await channel.close()
    await service.stop()


def _as(pki: local_pki.Pki, who: str, *scopes: str):
    return (("authorization", f"Bearer {pki.issue(who, list(scopes))}"),)


async def _get(channel, metadata) -> pb.GetProfileResponse:
    stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
    return await stub.GetProfile(pb.GetProfileRequest(profile_id="p-1"), metadata=metadata)


async def test_a_reader_without_the_pii_scope_sees_personal_traits_and_identifiers_masked(secured):
    pki, channel = secured
    reader = _as(pki, "analytics", "profiles:read")
    profile = (await eventually(lambda: _get_or_none(channel, reader))).profile
    assert profile.traits["plan"].value.string_value == "pro"
    assert profile.traits["email"].value.string_value == "[redacted]"
    assert {identity.value for identity in profile.identities.values()} == {"[redacted]"}
    assert "ada" not in str(profile) and "ada@example.com" not in str(profile)


async def test_a_reader_with_the_pii_scope_sees_everything(secured):
    pki, channel = secured
    full = _as(pki, "support", "profiles:read", "profiles:read_pii")
    profile = (await eventually(lambda: _get_or_none(channel, full))).profile
    assert profile.traits["email"].value.string_value == "ada@example.com"
    assert "user_id:ada" in profile.identities


async def test_history_is_masked_too(secured):
    pki, channel = secured
    reader = _as(pki, "analytics", "profiles:read")
    await eventually(lambda: _get_or_none(channel, reader))
    stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
    diff = await stub.DiffSnapshots(
        pb.DiffSnapshotsRequest(profile_id="p-1", from_version=1, to_version=1), metadata=reader
    )
    listing = await stub.ListSnapshots(pb.ListSnapshotsRequest(profile_id="p-1"), metadata=reader)
    assert "ada@example.com" not in str(diff) + str(listing)
    assert any(
        c.path == "traits.email" and c.new_value.string_value == "[redacted]" for c in listing.snapshots[0].changes
    )


async def test_each_read_is_audited_with_caller_and_subject_but_no_personal_data(secured):
    pki, channel = secured
    reader = _as(pki, "analytics", "profiles:read")
    await eventually(lambda: _get_or_none(channel, reader))
    stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetProfile(
            pb.GetProfileRequest(identifier={"type": "email", "value": "nobody@example.com"}), metadata=reader
        )
    audit = audit_service_pb2_grpc.AuditServiceStub(channel)
    answer = await audit.ListAuditRecords(
        audit_service_pb2.ListAuditRecordsRequest(caller="analytics"), metadata=_as(pki, "auditor", "audit:read")
    )
    records = list(answer.records)
    assert records and all(
        r.caller == "analytics"
        and r.method == "/mosaic.profile.v1.ProfileService/GetProfile"
        and r.service == "profile"
        for r in records
    )
    # Whom, keyed: neither the profile id nor the e-mail address as the caller sent them.
    assert all("p-1" not in r.subject and "nobody" not in r.subject for r in records)
    assert any(r.subject.startswith("email:") for r in records)
    about = await audit.ListAuditRecords(
        audit_service_pb2.ListAuditRecordsRequest(caller="analytics", subject="p-1"),
        metadata=_as(pki, "auditor", "audit:read"),
    )
    assert about.records and {r.subject for r in about.records} == {
        r.subject for r in records if r.subject.startswith("profile:")
    }
    by_email = await audit.ListAuditRecords(
        audit_service_pb2.ListAuditRecordsRequest(subject="email:nobody@example.com"),
        metadata=_as(pki, "auditor", "audit:read"),
    )
    assert [r.subject for r in by_email.records] == [r.subject for r in records if r.subject.startswith("email:")]
    page = await audit.ListAuditRecords(
        audit_service_pb2.ListAuditRecordsRequest(caller="analytics", page_size=1),
        metadata=_as(pki, "auditor", "audit:read"),
    )
    assert len(page.records) == 1 and page.next_page_token
    rest = await audit.ListAuditRecords(
        audit_service_pb2.ListAuditRecordsRequest(caller="analytics", page_token=page.next_page_token),
        metadata=_as(pki, "auditor", "audit:read"),
    )
    assert [r.time for r in rest.records] == [r.time for r in records[1:]]


async def test_a_bad_audit_page_token_names_the_field(secured):
    pki, channel = secured
    audit = audit_service_pb2_grpc.AuditServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audit.ListAuditRecords(
            audit_service_pb2.ListAuditRecordsRequest(page_token=str(2**64)), metadata=_as(pki, "auditor", "audit:read")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("page_token:")


async def _get_or_none(channel, metadata):
    try:
        return await _get(channel, metadata)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def test_reads_during_a_nats_outage_are_served_and_recorded_once_it_is_back(secured, nats_server):
    pki, channel = secured
    reader = _as(pki, "outage-reader", "profiles:read")
    await eventually(lambda: _get_or_none(channel, reader))  # each try is recorded, found or not
    audit = audit_service_pb2_grpc.AuditServiceStub(channel)
    auditor = _as(pki, "auditor", "audit:read")
    before = len(
        (
            await audit.ListAuditRecords(
                audit_service_pb2.ListAuditRecordsRequest(caller="outage-reader"), metadata=auditor
            )
        ).records
    )
    nats_server.stop()
    assert (await _get(channel, reader)).profile.version >= 1  # the store answers; the record waits
    nats_server.restart()

    async def recorded():
        try:
            answer = await audit.ListAuditRecords(
                audit_service_pb2.ListAuditRecordsRequest(caller="outage-reader"), metadata=auditor
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE  # still reconnecting
            return False
        return len(answer.records) == before + 1

    await eventually(recorded, timeout=30)


async def test_defining_an_event_series_takes_the_series_scope(secured):
    pki, channel = secured
    stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
    request = pb.DefineEventSeriesRequest(name="orders_daily", event="Order Completed")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DefineEventSeries(request, metadata=_as(pki, "analytics", "profiles:read", "profiles:read_pii"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    granted = local_pki.SERVICE_SCOPES["segmentation"]
    answer = await stub.DefineEventSeries(request, metadata=_as(pki, "segmentation", *granted))
    assert answer.definition.name == "orders_daily"
