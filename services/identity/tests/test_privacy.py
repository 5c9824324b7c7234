"""The identity service's part in privacy requests, on a real nats-server and each store: a
person merged from two profiles is exported, then erased; no table names them afterwards, and
the receipt lists the identifiers for suppression."""

from __future__ import annotations

import grpc
import pytest

from identity_service.app import build
from identity_service.config import Settings
from identity_service.store import open_store
from mosaic.consent.v1 import privacy_pb2
from mosaic.events.v1 import event_pb2, privacy_request_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2_grpc
from mosaic.identity.v1 import identity_service_pb2 as pb
from mosaic.platform import topics
from mosaic.platform.privacy import merge_parts
from mosaic.platform.server import Service
from mosaic.testing.plugin import eventually
from mosaic.testing.scan import rows_mentioning


@pytest.fixture(params=["embedded", "cassandra"])
async def service(request, make_settings):
    environ = {"MOSAIC_GRACE_SECONDS": "1", "MOSAIC_PARTITIONS": "2", "MOSAIC_STORE": request.param}
    if request.param == "cassandra":
        keyspace = request.getfixturevalue("cassandra_keyspace")
        environ |= {"MOSAIC_CASSANDRA_PORT": str(keyspace.port), "MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace}
    settings = Settings(make_settings("identity", **environ), rules_max_age=0.0, sightings_flush_seconds=0.1)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


def event(message_id: str, email: str | None = None, **fields) -> event_pb2.Event:
    built = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=message_id, source_id="web", **fields)
    if email:
        built.traits.update({"email": email})
    built.timestamp.GetCurrentTime()
    return built


async def send(service, *events: event_pb2.Event) -> None:
    for one in events:
        await service.runtime.bus.publish(topics.EVENTS_RAW, one.user_id or one.anonymous_id, one, one.message_id)


async def lookup(service, id_type: str, value: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        try:
            answer = await stub.Lookup(pb.LookupRequest(identifier=identity_pb2.Identifier(type=id_type, value=value)))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            return ""
        return answer.profile_id


class Receipts:
    def __init__(self) -> None:
        self.seen: list[privacy_request_pb2.PrivacyReceipt] = []

    async def listen(self, service) -> None:
        async def on_message(msg) -> None:
            self.seen.append(privacy_request_pb2.PrivacyReceipt.FromString(msg.data))

        await service.runtime.bus._nc.subscribe(topics.PRIVACY_RECEIPT.wildcard, cb=on_message)

    def final(self, request_id: str):
        return next((r for r in self.seen if r.request_id == request_id and r.final), None)


async def ask(service, request_id: str, kind, person: str) -> None:
    request = privacy_request_pb2.PrivacyRequested(request_id=request_id, kind=kind, person_id=person)
    await service.runtime.bus.publish(topics.PRIVACY_REQUESTED, person, request, f"privacy:{request_id}")


async def test_a_merged_person_is_exported_then_erased_and_no_table_names_them(service):
    receipts = Receipts()
    await receipts.listen(service)
    await send(service, event("m1", anonymous_id="anon-ada"), event("m2", user_id="ada", email="ada@example.com"))
    first = await eventually(lambda: lookup(service, "anonymous_id", "anon-ada"))
    await eventually(lambda: lookup(service, "user_id", "ada"))
    await send(service, event("m3", anonymous_id="anon-ada", email="ada@example.com"))  # merges the two
    await eventually(lambda: same(service, first))
    await send(service, event("b1", user_id="bob", email="bob@example.com"))
    bob = await eventually(lambda: lookup(service, "user_id", "bob"))
    survivor = await lookup(service, "user_id", "ada")

    await ask(service, "export-1", privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT, survivor)
    exported = await eventually(lambda: receipts.final("export-1"))
    document = merge_parts(r.export_json for r in receipts.seen if r.request_id == "export-1")
    assert {(i["type"], i["value"]) for i in document["identifiers"]} == {
        ("anonymous_id", "anon-ada"),
        ("user_id", "ada"),
        ("email", "ada@example.com"),
    }
    assert exported.exported["profiles"] == 2 and exported.exported["merges"] == 1

    ids = sorted({p["profile_id"] for p in document["profiles"]})
    await ask(service, "erase-1", privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, survivor)
    erased = await eventually(lambda: receipts.final("erase-1"))
    assert {(i.type, i.value) for i in erased.identifiers} == {
        ("anonymous_id", "anon-ada"),
        ("user_id", "ada"),
        ("email", "ada@example.com"),
    }
    assert erased.removed["identity_claims"] == 3 and erased.removed["identity_links"] >= 2
    assert await lookup(service, "user_id", "ada") == ""
    assert await lookup(service, "user_id", "bob") == bob
    store = await open_store(service.settings)
    try:
        left = await rows_mentioning(store.db, [*ids, "anon-ada", "ada@example.com", "\tada"])
        assert [table for table, _ in left if table != "identity_outbox"] == []
        assert await rows_mentioning(store.db, [bob])
    finally:
        await store.close()


async def same(service, profile_id: str) -> bool:
    return await lookup(service, "user_id", "ada") == profile_id == await lookup(service, "anonymous_id", "anon-ada")
