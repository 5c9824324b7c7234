"""The profile service's part in privacy requests, on a real nats-server and each store: an
export of the profile, its snapshots and archived events; an erasure after which no table
names the person."""

from __future__ import annotations

import json

import grpc
import pytest

from mosaic.consent.v1 import consent_pb2, privacy_pb2
from mosaic.events.v1 import consent_changed_pb2, event_pb2, identity_changed_pb2, privacy_request_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.privacy import merge_parts
from mosaic.platform.server import Service
from mosaic.profile.v1 import profile_service_pb2 as pb
from mosaic.profile.v1 import profile_service_pb2_grpc
from mosaic.testing.plugin import eventually
from mosaic.testing.scan import messages_mentioning, rows_mentioning
from profile_service.app import build
from profile_service.config import Settings
from profile_service.store import open_store

EVENTS = 30


@pytest.fixture(params=["embedded", "cassandra"])
async def service(request, make_settings):
    environ = {"MOSAIC_GRACE_SECONDS": "1", "MOSAIC_PARTITIONS": "2", "MOSAIC_STORE": request.param}
    if request.param == "cassandra":
        keyspace = request.getfixturevalue("cassandra_keyspace")
        environ |= {"MOSAIC_CASSANDRA_PORT": str(keyspace.port), "MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace}
    settings = Settings(make_settings("profile", **environ), (), 90, 90, 20, 1000)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


async def feed(service, profile_id: str, email: str) -> None:
    for i in range(EVENTS):
        event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id=profile_id, message_id=f"{profile_id}-{i}")
        event.timestamp.FromSeconds(1_760_000_000 + i * 3600)
        event.traits.update({"email": email, "visits": i})
        resolved = resolved_pb2.ResolvedEvent(
            profile_id=profile_id,
            event=event,
            identifiers=[
                identity_pb2.Identifier(type="user_id", value=profile_id),
                identity_pb2.Identifier(type="email", value=email),
            ],
        )
        await service.runtime.bus.publish(topics.EVENTS_RESOLVED, profile_id, resolved, event.message_id)


async def version_of(service, profile_id: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        try:
            return (await stub.GetProfile(pb.GetProfileRequest(profile_id=profile_id))).profile.version
        except grpc.aio.AioRpcError:
            return 0


class Receipts:
    def __init__(self) -> None:
        self.seen: list[privacy_request_pb2.PrivacyReceipt] = []

    async def listen(self, service) -> None:
        async def on_message(msg) -> None:
            self.seen.append(privacy_request_pb2.PrivacyReceipt.FromString(msg.data))

        await service.runtime.bus._nc.subscribe(topics.PRIVACY_RECEIPT.wildcard, cb=on_message)

    def final(self, request_id: str) -> privacy_request_pb2.PrivacyReceipt | None:
        return next((r for r in self.seen if r.request_id == request_id and r.final), None)


async def ask(service, request_id: str, kind, person: str) -> None:
    request = privacy_request_pb2.PrivacyRequested(
        request_id=request_id, kind=kind, person_id=person, profile_ids=[person]
    )
    await service.runtime.bus.publish(topics.PRIVACY_REQUESTED, person, request, f"privacy:{request_id}")


async def test_a_person_is_exported_then_erased_and_no_table_names_them(service):
    receipts = Receipts()
    await receipts.listen(service)
    await feed(service, "p-ada", "ada@example.com")
    await feed(service, "p-bob", "bob@example.com")
    await eventually(lambda: versions_are(service, {"p-ada": EVENTS, "p-bob": EVENTS}))

    await ask(service, "export-1", privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT, "p-ada")
    final = await eventually(lambda: receipts.final("export-1"))
    document = merge_parts(
        r.export_json for r in sorted(receipts.seen, key=lambda r: r.part) if r.request_id == "export-1"
    )
    assert dict(final.exported) == {"profiles": 1, "snapshots": EVENTS, "events": EVENTS}
    assert document["profiles"][0]["traits"]["email"]["value"] == "ada@example.com"
    assert len(document["events"]) == EVENTS and json.dumps(document)

    await ask(service, "erase-1", privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, "p-ada")
    erased = await eventually(lambda: receipts.final("erase-1"))
    assert erased.removed["profile_snapshots"] == EVENTS and erased.removed["profile_events"] == EVENTS
    assert await version_of(service, "p-ada") == 0
    store = await open_store(service.settings)
    try:
        assert await rows_mentioning(store.db, ["p-ada", "ada@example.com"]) == []
        assert await rows_mentioning(store.db, ["p-bob"])  # the other person is untouched
    finally:
        await store.close()
    await ask(service, "erase-2", privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, "p-ada")  # again: nothing left
    again = await eventually(lambda: receipts.final("erase-2"))
    assert sum(again.removed.values()) == 0


async def versions_are(service, expected: dict[str, int]) -> bool:
    return {p: await version_of(service, p) for p in expected} == expected


async def test_nothing_that_arrives_after_the_erasure_writes_the_person_back(service):
    receipts = Receipts()
    await receipts.listen(service)
    bus = service.runtime.bus
    await feed(service, "p-cy", "cy@example.com")
    await eventually(lambda: versions_are(service, {"p-cy": EVENTS}))
    await ask(service, "erase-late", privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, "p-cy")
    await eventually(lambda: receipts.final("erase-late"))
    # Past ingestion already, or resolved by identity before its part: an event, a consent
    # notice, a merge and a split naming the erased profile, all after the erasure.
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id="p-cy", message_id="late-1")
    event.timestamp.GetCurrentTime()
    event.traits.update({"email": "cy@example.com"})
    late = resolved_pb2.ResolvedEvent(
        profile_id="p-cy", event=event, identifiers=[identity_pb2.Identifier(type="email", value="cy@example.com")]
    )
    await bus.publish(topics.EVENTS_RESOLVED, "p-cy", late, "late-1")
    grant = consent_pb2.ConsentDecision(profile_id="p-cy", purpose="marketing", granted=True)
    grant.decided_at.GetCurrentTime()
    notice = consent_changed_pb2.ConsentChanged(
        person_id="p-cy", profile_ids=["p-cy"], cause="decision", person=consent_pb2.PersonConsent(decisions=[grant])
    )
    await bus.publish(topics.CONSENT_CHANGED, "p-cy", notice, "consent:late")
    merge = identity_changed_pb2.IdentityMerged(
        merge_id="m-late", survivor_profile_id="p-cy", merged_profile_ids=["p-cy"]
    )
    await bus.publish(topics.IDENTITY_MERGED, "p-cy", merge, "m-late")
    split = identity_changed_pb2.IdentitySplit(
        merge_id="m-old", split_id="s-late", survivor_profile_id="p-cy", restored_profile_ids=["p-cy"]
    )
    await bus.publish(topics.IDENTITY_SPLIT, "p-cy", split, "s-late")
    # And one for another person, merged into the erased one: its pointer is not written.
    other = identity_changed_pb2.IdentityMerged(
        merge_id="m-bob", survivor_profile_id="p-bob", merged_profile_ids=["p-cy"]
    )
    await bus.publish(topics.IDENTITY_MERGED, "p-bob", other, "m-bob")
    await feed(service, "p-bob", "bob@example.com")
    await eventually(
        lambda: drained(
            service, topics.EVENTS_RESOLVED, topics.CONSENT_CHANGED, topics.IDENTITY_MERGED, topics.IDENTITY_SPLIT
        )
    )
    assert await version_of(service, "p-cy") == 0
    store = await open_store(service.settings)
    try:
        assert await rows_mentioning(store.db, ["p-cy", "cy@example.com"]) == []
        assert await rows_mentioning(store.db, ["p-bob"])
    finally:
        await store.close()
    info = await bus._js.stream_info(topics.DEAD_LETTER_STREAM)
    assert info.state.messages == 0, "dropped, not dead-lettered (a dead letter would name the person)"
    # Nor left in their streams (but bob's merge, keyed by bob, which names the erased id).
    found = await messages_mentioning(service.settings.nats_url, ["p-cy", "cy@example.com"])
    streams = {topics.EVENTS_RESOLVED.stream, topics.CONSENT_CHANGED.stream, topics.IDENTITY_SPLIT.stream}
    assert [s for s, _, _ in found if s in streams] == []
    assert [s for s, _, _ in found if s == topics.IDENTITY_MERGED.stream] == [topics.IDENTITY_MERGED.stream]


async def drained(service, *consumed: topics.Topic) -> bool:
    js = service.runtime.bus._js
    for topic in consumed:
        for partition in range(service.settings.partitions):
            info = await js.consumer_info(topic.stream, f"profile-{partition}")
            if info.num_pending or info.num_ack_pending:
                return False
    return True
