"""Privacy requests as a saga on a real nats-server: consent's own part, a second participant
(the platform's Participant, as every other service runs it) answering late, receipts erased
from their stream, suppression published for the identifiers, deadlines listed."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from google.protobuf import timestamp_pb2

from consent_service.app import build
from consent_service.config import Settings
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc, privacy_pb2, privacy_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as cpb
from mosaic.consent.v1 import privacy_service_pb2 as pb
from mosaic.events.v1 import identity_changed_pb2, suppression_changed_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.privacy import Answer, Participant
from mosaic.platform.server import Service
from mosaic.testing.plugin import eventually

COMPLETED = privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED
PENDING = privacy_pb2.PRIVACY_REQUEST_STATE_PENDING


@pytest.fixture
async def service(start_consent):
    service = await start_consent(MOSAIC_PARTITIONS="2", MOSAIC_PRIVACY_PARTICIPANTS="consent,crm")
    yield service
    await service.stop()


@pytest.fixture
async def stubs(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield consent_service_pb2_grpc.ConsentServiceStub(channel), privacy_service_pb2_grpc.PrivacyServiceStub(channel)


class Crm:
    """A second participant, run by the platform's Participant over its own connection."""

    def __init__(self) -> None:
        self.erased: list[str] = []

    async def export(self, request) -> Answer:
        notes = [{"profile_id": request.person_id, "note": f"note {i}", "padding": "x" * 2000} for i in range(300)]
        return Answer({"notes": len(notes)}, {"notes": notes, "owner": "crm"})

    async def erase(self, request) -> Answer:
        self.erased.append(request.request_id)
        return Answer(
            {"crm_notes": 3},
            identifiers=[
                identity_pb2.Identifier(type="email", value="ada@example.com"),
                identity_pb2.Identifier(type="device_id", value="d-1"),
            ],
        )


async def run_crm(url: str, crm: Crm) -> Bus:
    bus = await Bus.connect(url, "crm", 2)
    Participant("crm", bus, crm.export, crm.erase).start(range(2))
    return bus


async def status(privacy, request_id: str) -> pb.GetPrivacyRequestResponse:
    return await privacy.GetPrivacyRequest(pb.GetPrivacyRequestRequest(request_id=request_id))


async def completed(privacy, request_id: str):
    answer = await status(privacy, request_id)
    return answer if answer.request.state == COMPLETED else None


def by_profile(profile_id: str) -> pb.PersonSelector:
    return pb.PersonSelector(profile_id=profile_id)


async def test_an_export_completes_when_every_participant_answered_and_is_one_document(service, stubs, nats_server):
    consent, privacy = stubs
    await consent.SetConsent(
        cpb.SetConsentRequest(
            decision=consent_pb2.ConsentDecision(
                profile_id="old", purpose="marketing", granted=True, decided_at=timestamp_pb2.Timestamp(seconds=10)
            )
        )
    )
    await service.runtime.bus.publish(
        topics.IDENTITY_MERGED,
        "ada",
        identity_changed_pb2.IdentityMerged(merge_id="m", survivor_profile_id="ada", merged_profile_ids=["old"]),
        "m",
    )
    await eventually(lambda: person_is(consent, "old", "ada"))
    started = (
        await privacy.ExportPerson(pb.ExportPersonRequest(person=by_profile("old"), requested_by="ticket-7"))
    ).request
    assert (started.person_id, sorted(started.profile_ids), started.state) == ("ada", ["ada", "old"], PENDING)
    await eventually(lambda: answered(privacy, started.request_id, ["consent"]))
    await asyncio.sleep(0.5)
    assert (await status(privacy, started.request_id)).request.state == PENDING  # crm has not answered
    crm_bus = await run_crm(nats_server.url, Crm())  # comes up late, like a service restarted
    try:
        answer = await eventually(lambda: completed(privacy, started.request_id))
    finally:
        await crm_bus.close()
    document = json.loads(answer.export_json)
    assert [e["profile_id"] for e in document["consent"]["consent_ledger"]] == ["old"]
    assert len(document["crm"]["notes"]) == 300 and document["crm"]["owner"] == "crm"  # sent in several parts
    assert {r.participant: dict(r.exported) for r in answer.request.receipts} == {
        "consent": {"consent_ledger": 1},
        "crm": {"notes": 300},
    }
    stream = await service.runtime.bus._js.stream_info(topics.PRIVACY_RECEIPT.stream)
    assert stream.state.messages == 0  # every receipt erased once stored


async def person_is(consent, profile_id: str, person: str) -> bool:
    state = await consent.GetConsentState(cpb.GetConsentStateRequest(profile_id=profile_id))
    return state.person_id == person


async def answered(privacy, request_id: str, participants: list[str]) -> bool:
    return sorted(r.participant for r in (await status(privacy, request_id)).request.receipts) == participants


async def test_an_erasure_removes_consent_suppresses_the_identifiers_and_is_idempotent(service, stubs, nats_server):
    consent, privacy = stubs
    suppressions: list[suppression_changed_pb2.SuppressionChanged] = []

    async def on_suppression(msg):
        suppressions.append(suppression_changed_pb2.SuppressionChanged.FromString(msg.data))

    await service.runtime.bus._nc.subscribe(topics.SUPPRESSION_CHANGED.wildcard, cb=on_suppression)
    await consent.SetConsent(
        cpb.SetConsentRequest(decision=consent_pb2.ConsentDecision(profile_id="ada", purpose="marketing", granted=True))
    )
    assert (await consent.CheckConsent(cpb.CheckConsentRequest(profile_id="ada", purpose="marketing"))).granted
    crm = Crm()
    crm_bus = await run_crm(nats_server.url, crm)
    try:
        call = pb.ErasePersonRequest(
            person=by_profile("ada"), request_id="r-1", jurisdiction=consent_pb2.JURISDICTION_CCPA
        )
        started = (await privacy.ErasePerson(call)).request
        again = (await privacy.ErasePerson(call)).request
        assert again.request_id == started.request_id == "r-1"
        answer = await eventually(lambda: completed(privacy, "r-1"))
        await asyncio.sleep(0.5)
    finally:
        await crm_bus.close()
    assert (answer.request.deadline.seconds - answer.request.requested_at.seconds) == 45 * 86400
    assert {r.participant: dict(r.removed) for r in answer.request.receipts} == {
        "consent": {
            "consent_ledger": 1,
            "consent_heads": 0,
            "consent_merges": 0,
            "privacy_exports": 0,
            "stream:DEAD_LETTERS": 0,  # its streams' messages of the person go once the request completes
        },
        "crm": {"crm_notes": 3},
    }
    assert not answer.export_json
    # Complete: the request and the person's consent notices (the erasure's own too) left their streams.
    for topic in (topics.PRIVACY_REQUESTED, topics.CONSENT_CHANGED):
        stream = await service.runtime.bus._js.stream_info(topic.stream)
        assert (stream.state.messages, stream.state.last_seq) == (0, 2 if topic is topics.CONSENT_CHANGED else 1)
    check = await consent.CheckConsent(cpb.CheckConsentRequest(profile_id="ada", purpose="marketing"))
    assert (check.granted, check.reason) == (False, "opt-in default")
    history = await consent.ListConsentHistory(cpb.ListConsentHistoryRequest(profile_id="ada"))
    assert not history.decisions
    await eventually(lambda: suppressions)
    assert [(s.profile_id, s.request_id, [(i.type, i.value) for i in s.identifiers]) for s in suppressions] == [
        ("ada", "r-1", [("email", "ada@example.com")])
    ]  # device ids are not on ingestion's list
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await privacy.ExportPerson(pb.ExportPersonRequest(person=by_profile("ada"), request_id="r-1"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_requests_are_listed_by_deadline_and_those_due_soon_found(stubs):
    _, privacy = stubs
    ccpa = (
        await privacy.ExportPerson(
            pb.ExportPersonRequest(person=by_profile("a"), jurisdiction=consent_pb2.JURISDICTION_CCPA)
        )
    ).request
    gdpr = (await privacy.ExportPerson(pb.ExportPersonRequest(person=by_profile("b")))).request
    assert gdpr.deadline.seconds - gdpr.requested_at.seconds == 30 * 86400
    seen, token = [], ""
    while True:
        page = await privacy.ListPrivacyRequests(pb.ListPrivacyRequestsRequest(page_size=1, page_token=token))
        seen += [r.request_id for r in page.requests]
        if not (token := page.next_page_token):
            break
    assert seen == [gdpr.request_id, ccpa.request_id]
    due = await privacy.ListPrivacyRequests(pb.ListPrivacyRequestsRequest(due_within_days=31))
    assert [r.request_id for r in due.requests] == [gdpr.request_id]


async def test_bad_requests_name_the_field(stubs):
    _, privacy = stubs
    for call, code, field in [
        (privacy.ErasePerson(pb.ErasePersonRequest()), grpc.StatusCode.INVALID_ARGUMENT, "person"),
        (
            privacy.ErasePerson(
                pb.ErasePersonRequest(
                    person=pb.PersonSelector(
                        profile_id="p", identifier=identity_pb2.Identifier(type="email", value="a@b.c")
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "person",
        ),
        (
            privacy.ErasePerson(
                pb.ErasePersonRequest(
                    person=pb.PersonSelector(identifier=identity_pb2.Identifier(type="email", value="a@b.c"))
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "person.identifier",
        ),
        (privacy.GetPrivacyRequest(pb.GetPrivacyRequestRequest(request_id="nope")), grpc.StatusCode.NOT_FOUND, ""),
        (
            privacy.ListPrivacyRequests(pb.ListPrivacyRequestsRequest(page_token="forged")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code
        assert caught.value.details().startswith(field)


async def test_an_erasure_deletes_the_documents_of_the_persons_earlier_exports(service, stubs):
    _, privacy = stubs
    crm_less = await privacy.ExportPerson(pb.ExportPersonRequest(person=by_profile("eve")))
    rid = crm_less.request.request_id
    await eventually(lambda: answered(privacy, rid, ["consent"]))
    erase = await privacy.ErasePerson(pb.ErasePersonRequest(person=by_profile("eve")))
    await eventually(lambda: answered(privacy, erase.request.request_id, ["consent"]))
    receipt = (await status(privacy, erase.request.request_id)).request.receipts[0]
    assert receipt.removed["privacy_exports"] == 1
    assert (await status(privacy, rid)).request.HasField("export_deleted_at")


async def test_a_request_completes_though_consent_itself_was_down_when_a_receipt_came(make_settings, nats_server):
    base = make_settings("consent")
    settings = Settings.from_env(
        {
            "MOSAIC_AUTH": "off",
            "MOSAIC_NATS_URL": base.nats_url,
            "MOSAIC_DATA_DIR": str(base.data_dir),
            "MOSAIC_GRACE_SECONDS": "1",
            "MOSAIC_PARTITIONS": "2",
            "MOSAIC_PRIVACY_PARTICIPANTS": "consent,crm",
        }
    )

    async def start() -> Service:
        service = Service(settings.platform, lambda runtime: build(runtime, settings))
        await service.start()
        return service

    service = await start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        privacy = privacy_service_pb2_grpc.PrivacyServiceStub(channel)
        await privacy.ErasePerson(pb.ErasePersonRequest(person=by_profile("zed"), request_id="r-down"))
        await eventually(lambda: answered(privacy, "r-down", ["consent"]))
    await service.stop()  # the coordinator is down when crm answers
    crm = Crm()
    crm_bus = await run_crm(nats_server.url, crm)
    try:
        await eventually(lambda: crm.erased == ["r-down"])
        service = await start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                privacy = privacy_service_pb2_grpc.PrivacyServiceStub(channel)
                answer = await eventually(lambda: completed(privacy, "r-down"))
                assert {r.participant for r in answer.request.receipts} == {"consent", "crm"}
        finally:
            await service.stop()
    finally:
        await crm_bus.close()
