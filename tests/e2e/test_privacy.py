"""A person exported, then erased across the mesh, with the profile service killed halfway: the request waits
for it, completes once it is back, and afterwards no table of any service (on each store) and no
message of any stream names the person, ingestion drops the person's new events, and an event
already past ingestion that arrives after the erasure writes nothing back."""

from __future__ import annotations

import asyncio
import json

import grpc
import nats
import pytest
from google.protobuf import struct_pb2

from mosaic.cli import exits
from mosaic.cli.__main__ import main as mosaic
from mosaic.cli.mesh import Mesh
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc, privacy_pb2, privacy_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as cpb
from mosaic.consent.v1 import privacy_service_pb2 as pb
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2, delivery_service_pb2_grpc
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2, ingestion_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.config import PlatformSettings
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore
from mosaic.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2, segmentation_service_pb2_grpc
from mosaic.testing.plugin import eventually
from mosaic.testing.scan import messages_mentioning, rows_mentioning

SERVICES = ("identity", "profile", "consent", "ingestion", "segmentation", "delivery")  # every store is scanned


@pytest.fixture(params=["embedded", "cassandra"])
def mesh(request, tmp_path, nats_server):
    env = {
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_STORE": request.param,
        "MOSAIC_DATA_DIR": str(tmp_path / "data"),
        "MOSAIC_PARTITIONS": "4",
        "MOSAIC_INGEST_OPEN_SOURCES": "true",
        "OTEL_TRACES_EXPORTER": "none",
        "MOSAIC_AUTH": "off",
    }  # authentication has its own e2e test (the walk)
    if request.param == "cassandra":
        keyspace = request.getfixturevalue("cassandra_keyspace")
        env |= {"MOSAIC_CASSANDRA_PORT": str(keyspace.port), "MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace}
    mesh = Mesh(env, tmp_path / "logs").start()
    yield mesh
    mesh.stop()


def identify(message_id: str, email: str, **ids) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=message_id, **ids)
    event.traits.update({"email": email, "plan": "pro"})
    return event


async def lookup(mesh: Mesh, id_type: str, value: str) -> str:
    async with grpc.aio.insecure_channel(mesh.address("identity")) as channel:
        try:
            answer = await identity_service_pb2_grpc.IdentityServiceStub(channel).Lookup(
                identity_service_pb2.LookupRequest(identifier=identity_pb2.Identifier(type=id_type, value=value))
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            return ""
        return answer.profile_id


async def profile_version(mesh: Mesh, profile_id: str) -> int:
    async with grpc.aio.insecure_channel(mesh.address("profile")) as channel:
        try:
            answer = await profile_service_pb2_grpc.ProfileServiceStub(channel).GetProfile(
                profile_service_pb2.GetProfileRequest(profile_id=profile_id)
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            return 0
        return answer.profile.version


async def ingest(mesh: Mesh, *events: event_pb2.Event) -> list[int]:
    async with grpc.aio.insecure_channel(mesh.address("ingestion")) as channel:
        answer = await ingestion_service_pb2_grpc.IngestionServiceStub(channel).Ingest(
            ingestion_service_pb2.IngestRequest(source_id="web", events=list(events))
        )
    return [r.status for r in answer.results]


async def tables_naming(mesh: Mesh, needles: list[str]) -> list[str]:
    settings = PlatformSettings.from_env("scan", mesh.env)
    found: list[tuple[str, tuple]] = []
    if settings.store == "cassandra":
        db: CassandraStore | SqliteStore = CassandraStore(settings.cassandra, "scan")
        await db.open([])
        try:
            found = [(t, r) for t, r in await rows_mentioning(db, needles) if t.startswith(SERVICES)]
        finally:
            await db.close()
    else:
        for service in SERVICES:
            db = SqliteStore(settings.data_dir / f"{service}.db")
            await db.open([])
            try:
                found += await rows_mentioning(db, needles)
            finally:
                await db.close()
    # The request itself is the proof of the erasure: it keeps the profile ids, nothing else.
    return sorted({table for table, _ in found} - {"privacy_requests", "schema_migrations"})


async def test_an_erasure_waits_for_a_killed_service_then_leaves_nothing_of_the_person(
    mesh, capsys, webhook_receiver, tmp_path
):
    async with grpc.aio.insecure_channel(mesh.address("segmentation")) as channel:
        await segmentation_service_pb2_grpc.SegmentationServiceStub(channel).CreateSegment(
            segmentation_service_pb2.CreateSegmentRequest(
                segment=segment_pb2.Segment(
                    segment_id="pro",
                    name="Pro",
                    condition=segment_pb2.Condition(
                        trait=segment_pb2.TraitCondition(
                            trait="plan",
                            operator=segment_pb2.OPERATOR_EQUALS,
                            value=struct_pb2.Value(string_value="pro"),
                        )
                    ),
                )
            )
        )
    async with grpc.aio.insecure_channel(mesh.address("delivery")) as channel:
        await delivery_service_pb2_grpc.DeliveryServiceStub(channel).CreateDestination(
            delivery_service_pb2.CreateDestinationRequest(
                destination=delivery_pb2.Destination(
                    destination_id="crm",
                    name="CRM",
                    webhook_url=webhook_receiver.url("/crm"),
                    segment_id="pro",
                    purpose="marketing",
                )
            )
        )
    assert (
        await ingest(
            mesh,
            identify("e1", "ada@example.com", anonymous_id="a-ada"),
            identify("e2", "ada@example.com", user_id="ada"),
            identify("e3", "bob@example.com", user_id="bob"),
        )
        == [ingestion_service_pb2.EVENT_STATUS_ACCEPTED] * 3
    )
    ada = await eventually(lambda: same_person(mesh))
    await eventually(lambda: profile_version(mesh, ada))
    bob = await eventually(lambda: lookup(mesh, "user_id", "bob"))
    await eventually(lambda: deliveries_of(mesh, ada))  # a membership and a delivery hold the person too
    async with grpc.aio.insecure_channel(mesh.address("consent")) as channel:
        consent = consent_service_pb2_grpc.ConsentServiceStub(channel)
        await consent.SetConsent(
            cpb.SetConsentRequest(
                decision=consent_pb2.ConsentDecision(profile_id=ada, purpose="marketing", granted=True)
            )
        )
        profiles = sorted(set(await profile_ids(mesh, ada)))

        export = tmp_path / "ada.json"  # first, everything held about the person, by any identifier
        code = await asyncio.to_thread(
            mosaic,
            [
                "privacy",
                "export",
                "--identifier",
                "anonymous_id:a-ada",
                "--output",
                str(export),
                "--address",
                mesh.address("consent"),
            ],
        )
        assert code == 0
        document = json.loads(export.read_text())
        assert {(i["type"], i["value"]) for i in document["identity"]["identifiers"]} >= {
            ("user_id", "ada"),
            ("anonymous_id", "a-ada"),
            ("email", "ada@example.com"),
        }
        assert document["profile"]["profiles"][0]["traits"]["plan"]["value"] == "pro"
        assert document["profile"]["events"] and document["profile"]["snapshots"]
        assert [e["purpose"] for e in document["consent"]["consent_ledger"]] == ["marketing"]
        assert document["segmentation"]["memberships"][0]["segment_id"] == "pro"
        assert document["delivery"]["deliveries"][0]["destination_id"] == "crm"

        mesh.processes["profile"].kill()  # halfway: profile is down when the request goes out
        mesh.processes["profile"].wait()
        code = await asyncio.to_thread(
            mosaic,
            [
                "privacy",
                "erase",
                "--email",
                "ada@example.com",
                "--wait",
                "3",
                "--request-id",
                "erase-ada",
                "--address",
                mesh.address("consent"),
            ],
        )
        assert code == exits.PENDING  # still pending: profile has not answered
        pending = json.loads(capsys.readouterr().out)
        assert pending["state"] == "PRIVACY_REQUEST_STATE_PENDING"
        mesh.start_service("profile")
        async with grpc.aio.insecure_channel(mesh.address("consent")) as privacy_channel:
            privacy = privacy_service_pb2_grpc.PrivacyServiceStub(privacy_channel)
            done = await eventually(lambda: completed(privacy, "erase-ada"), timeout=60)
        assert {r.participant for r in done.receipts} == {"consent", "delivery", "identity", "profile", "segmentation"}
        removed = {r.participant: dict(r.removed) for r in done.receipts}
        assert removed["segmentation"]["segmentation_memberships"] >= 1 and removed["delivery"]["delivery_log"] >= 1
        # What each removed from the streams of what it produces (identity: of what ingestion did).
        assert removed["identity"]["stream:EVENTS_RAW"] == 2 and removed["identity"]["stream:EVENTS_RESOLVED"] >= 2
        assert removed["profile"]["stream:PROFILE_UPDATED"] >= 1
        assert removed["segmentation"]["stream:SEGMENT_MEMBERSHIP"] >= 1
        assert removed["delivery"]["stream:DELIVERY_OUTCOME"] >= 1
        assert dict(next(r for r in done.receipts if r.participant == "consent").removed)["consent_ledger"] == 1
        check = await consent.CheckConsent(cpb.CheckConsentRequest(profile_id=ada, purpose="marketing"))
        assert not check.granted

    assert await lookup(mesh, "email", "ada@example.com") == "" and await profile_version(mesh, ada) == 0
    assert await lookup(mesh, "user_id", "bob") == bob
    # An event past ingestion when the erasure ran, resolved to the person's profile, arrives
    # after it: the profile service drops it (its tombstone) and takes it out of the stream; the
    # consent it carries adds no ledger entry (consent's tombstone).
    late = identify("late-resolved", "ada@example.com", user_id="ada")
    late.context.update({"consent": {"categoryPreferences": {"marketing": True}}})
    await resolved_late(mesh, ada, late)
    await eventually(lambda: consumed(mesh, "profile", topics.EVENTS_RESOLVED))
    await eventually(lambda: consumed(mesh, "consent", topics.EVENTS_RESOLVED))
    assert await profile_version(mesh, ada) == 0
    assert await eventually(lambda: suppressed(mesh))  # suppression.changed reached ingestion
    assert await tables_naming(mesh, [*profiles, "ada@example.com", "a-ada"]) == []
    assert await tables_naming(mesh, [bob])  # the scan does find a person who is still there
    # Nor a stream (suppression.changed goes once ingestion applied identity's identifiers).
    assert await eventually(lambda: streams_clean(mesh, [*profiles, "ada@example.com", "a-ada"]))
    assert {"EVENTS_RAW", "EVENTS_RESOLVED", "PROFILE_UPDATED"} <= set(
        await streams_naming(mesh, [bob, "bob@example.com"])
    )


async def resolved_late(mesh: Mesh, profile_id: str, event: event_pb2.Event) -> None:
    bus = await Bus.connect(mesh.env["MOSAIC_NATS_URL"], "test", int(mesh.env["MOSAIC_PARTITIONS"]))
    try:
        resolved = resolved_pb2.ResolvedEvent(
            profile_id=profile_id, event=event, identifiers=[identity_pb2.Identifier(type="user_id", value="ada")]
        )
        await bus.publish(topics.EVENTS_RESOLVED, profile_id, resolved, event.message_id)
    finally:
        await bus.close()


async def consumed(mesh: Mesh, service: str, topic: topics.Topic) -> bool:
    nc = await nats.connect(mesh.env["MOSAIC_NATS_URL"])
    try:
        for partition in range(int(mesh.env["MOSAIC_PARTITIONS"])):
            info = await nc.jetstream().consumer_info(topic.stream, f"{service}-{partition}")
            if info.num_pending or info.num_ack_pending:
                return False
        return True
    finally:
        await nc.close()


async def streams_clean(mesh: Mesh, needles: list[str]) -> bool:
    assert await streams_naming(mesh, needles) == []
    return True


async def streams_naming(mesh: Mesh, needles: list[str]) -> list[str]:
    found = await messages_mentioning(mesh.env["MOSAIC_NATS_URL"], needles)
    # The audit log is kept for its retention: who read or changed whom, pseudonymously.
    return sorted({stream for stream, _, _ in found} - {"AUDIT"})


async def deliveries_of(mesh: Mesh, profile_id: str) -> list:
    async with grpc.aio.insecure_channel(mesh.address("delivery")) as channel:
        answer = await delivery_service_pb2_grpc.DeliveryServiceStub(channel).ListDeliveries(
            delivery_service_pb2.ListDeliveriesRequest(profile_id=profile_id)
        )
    return list(answer.deliveries)


async def same_person(mesh: Mesh) -> str:
    ada, anon = await lookup(mesh, "user_id", "ada"), await lookup(mesh, "anonymous_id", "a-ada")
    return ada if ada and ada == anon else ""


async def profile_ids(mesh: Mesh, survivor: str) -> list[str]:
    async with grpc.aio.insecure_channel(mesh.address("identity")) as channel:
        answer = await identity_service_pb2_grpc.IdentityServiceStub(channel).GetMergeHistory(
            identity_service_pb2.GetMergeHistoryRequest(profile_id=survivor)
        )
    return [survivor, *(m.merged_profile_id for m in answer.merges)]


async def completed(privacy, request_id: str):
    answer = await privacy.GetPrivacyRequest(pb.GetPrivacyRequestRequest(request_id=request_id))
    return answer.request if answer.request.state == privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED else None


async def suppressed(mesh: Mesh) -> bool:
    statuses = await ingest(mesh, identify("late", "Ada@Example.com", anonymous_id="someone-new"))
    return statuses == [ingestion_service_pb2.EVENT_STATUS_SUPPRESSED]
