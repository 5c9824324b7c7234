"""End to end: the six services as processes on real nats-server and Cassandra.

One identify event walks the whole mesh: ingestion → identity → profile (snapshot in
Cassandra) → segmentation (entry) → delivery (consent over gRPC, webhook POST). The walk is
one trace, received over real OTLP by this test.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import grpc
import nats
import pytest
from cassandra.cluster import Cluster
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mosaic.cli import apis
from mosaic.cli import pki as local_pki
from mosaic.cli.mesh import SERVICES, Mesh
from mosaic.consent.v1 import consent_pb2, consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2, delivery_service_pb2_grpc
from mosaic.events.v1 import event_pb2, segment_membership_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2, ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import clients as platform_clients
from mosaic.platform import topics
from mosaic.platform.config import SecuritySettings
from mosaic.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2, segmentation_service_pb2_grpc
from mosaic.testing.plugin import eventually

ENTERED = segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED


@pytest.fixture(scope="module")
def credentials(tmp_path_factory) -> local_pki.Pki:
    """The mesh runs as `mosaic run` runs it: TLS, and tokens checked against the local JWKS."""
    return local_pki.ensure(tmp_path_factory.mktemp("pki"), admin_scopes=apis.scopes())


def channel_to(mesh: Mesh, name: str, credentials: local_pki.Pki, token: str = "admin") -> grpc.aio.Channel:
    security = SecuritySettings(ca=str(credentials.ca), token_file=str(credentials.token(token)) if token else "")
    return platform_clients.channel(mesh.address(name), security)


@pytest.fixture
def mesh(tmp_path, nats_server, cassandra_keyspace, otlp_receiver, credentials):
    env = {
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_STORE": "cassandra",
        "MOSAIC_CASSANDRA_PORT": str(cassandra_keyspace.port),
        "MOSAIC_CASSANDRA_KEYSPACE": cassandra_keyspace.keyspace,
        "MOSAIC_PARTITIONS": "4",
        "MOSAIC_INGEST_OPEN_SOURCES": "true",  # the walk sends for `web` and `pos`, never created
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    mesh = Mesh(env, tmp_path / "logs", service_env=credentials.service_env).start()
    yield mesh
    mesh.stop()


class Clients:
    def __init__(self, mesh: Mesh, credentials: local_pki.Pki) -> None:
        self.channels = {name: channel_to(mesh, name, credentials) for name in SERVICES}
        self.ingestion = ingestion_service_pb2_grpc.IngestionServiceStub(self.channels["ingestion"])
        self.identity = identity_service_pb2_grpc.IdentityServiceStub(self.channels["identity"])
        self.profile = profile_service_pb2_grpc.ProfileServiceStub(self.channels["profile"])
        self.segmentation = segmentation_service_pb2_grpc.SegmentationServiceStub(self.channels["segmentation"])
        self.consent = consent_service_pb2_grpc.ConsentServiceStub(self.channels["consent"])
        self.delivery = delivery_service_pb2_grpc.DeliveryServiceStub(self.channels["delivery"])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


def identify(user_id: str, **traits) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id=user_id)
    event.traits.update(traits)
    return event


async def profile_of(clients: Clients, user_id: str) -> str:
    identifier = identity_pb2.Identifier(type="user_id", value=user_id)
    try:
        answer = await clients.identity.Lookup(identity_service_pb2.LookupRequest(identifier=identifier))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return ""
    return answer.profile_id


async def test_every_service_answers_health_and_reflection(mesh, credentials):
    for name in SERVICES:
        async with channel_to(mesh, name, credentials, token="") as channel:  # probes need no token
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.SERVING, name
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [s.name async for answer in stream for s in answer.list_services_response.service]
            assert f"mosaic.{name}.v1.{name.capitalize()}Service" in names
            assert "grpc.health.v1.Health" in names


async def test_one_identify_event_walks_the_whole_mesh_as_one_trace(
    mesh, credentials, webhook_receiver, otlp_receiver, cassandra_keyspace
):
    clients = Clients(mesh, credentials)
    await clients.segmentation.CreateSegment(
        segmentation_service_pb2.CreateSegmentRequest(
            segment=segment_pb2.Segment(
                segment_id="enterprise",
                name="Enterprise customers",
                condition=segment_pb2.Condition(
                    trait=segment_pb2.TraitCondition(
                        trait="plan",
                        operator=segment_pb2.OPERATOR_EQUALS,
                        value=struct_pb2.Value(string_value="enterprise"),
                    )
                ),
            )
        )
    )
    await clients.delivery.CreateDestination(
        delivery_service_pb2.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="crm-hook",
                name="CRM",
                webhook_url=webhook_receiver.url("/crm"),
                segment_id="enterprise",
                purpose="marketing",
            )
        )
    )

    # First event: the person becomes known; not yet in the segment.
    first = await clients.ingestion.Ingest(
        ingestion_service_pb2.IngestRequest(
            source_id="web", events=[identify("u-1", email="Ada@Example.com", plan="free")]
        )
    )
    assert first.results[0].status == ingestion_service_pb2.EVENT_STATUS_ACCEPTED
    profile_id = await eventually(lambda: profile_of(clients, "u-1"))
    await clients.consent.SetConsent(
        consent_service_pb2.SetConsentRequest(
            decision=consent_pb2.ConsentDecision(profile_id=profile_id, purpose="marketing", granted=True)
        )
    )

    # The person's consent is kept on the profile as a change of its own (version 2). Identity
    # knows the profile id before profile has folded the first event: until then, NOT_FOUND.
    async def consent_on_profile() -> bool:
        try:
            answer = await clients.profile.GetProfile(profile_service_pb2.GetProfileRequest(profile_id=profile_id))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            return False
        return answer.profile.version == 2

    await eventually(consent_on_profile)

    # Second event: the upgrade puts the person into the segment, which triggers the webhook.
    second = await clients.ingestion.Ingest(
        ingestion_service_pb2.IngestRequest(source_id="web", events=[identify("u-1", plan="enterprise")])
    )
    request = await eventually(lambda: webhook_receiver.requests and webhook_receiver.requests[0])
    assert request.path == "/crm"
    assert request.body["profile_id"] == profile_id
    assert request.body["segment_id"] == "enterprise"
    assert request.headers["Idempotency-Key"] == request.body["delivery_id"]

    answer = await clients.profile.GetProfile(profile_service_pb2.GetProfileRequest(profile_id=profile_id))
    traits = {name: trait.value for name, trait in answer.profile.traits.items()}
    assert traits["plan"].string_value == "enterprise"
    assert traits["email"].string_value == "Ada@Example.com"
    assert answer.profile.version == 3 and answer.profile.event_count == 2
    member = await clients.segmentation.IsMember(
        segmentation_service_pb2.IsMemberRequest(segment_id="enterprise", profile_id=profile_id)
    )
    assert member.member and member.profile_version == 3

    # The snapshots are in Cassandra, not only in a cache.
    cluster = Cluster(["127.0.0.1"], port=cassandra_keyspace.port, protocol_version=5)
    try:
        rows = cluster.connect(cassandra_keyspace.keyspace).execute(
            "SELECT version FROM profile_snapshots WHERE profile_id = %s AND bucket = 0", (profile_id,)
        )
        assert sorted(row.version for row in rows) == [1, 2, 3]
    finally:
        cluster.shutdown()

    # One trace: from ingestion's Ingest span to the webhook POST, through every hop.
    trace_id = request.headers["traceparent"].split("-")[1]
    expected = {
        ("ingestion", "/mosaic.ingestion.v1.IngestionService/Ingest"),
        ("ingestion", "publish events.raw"),
        ("identity", "process events.raw"),
        ("identity", "publish events.resolved"),
        ("profile", "process events.resolved"),
        ("profile", "publish profile.updated"),
        ("segmentation", "process profile.updated"),
        ("segmentation", "publish segment.membership"),
        ("delivery", "process segment.membership"),
        ("delivery", "/mosaic.consent.v1.ConsentService/CheckConsent"),
        ("delivery", "publish delivery.jobs"),
        ("delivery", "process delivery.jobs"),
        ("consent", "/mosaic.consent.v1.ConsentService/CheckConsent"),
        ("delivery", "POST"),
    }

    def walk_spans():
        spans = [s for s in otlp_receiver.snapshot() if s.trace_id == trace_id]
        assert expected <= {(s.service, s.name) for s in spans}, sorted({(s.service, s.name) for s in spans})
        return spans

    spans = await eventually(walk_spans)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id not in ids]
    assert [(r.service, r.name) for r in roots] == [("ingestion", "/mosaic.ingestion.v1.IngestionService/Ingest")]
    assert second.results[0].message_id
    await clients.close()


async def test_without_consent_nothing_is_sent_and_the_delivery_says_why(mesh, credentials, webhook_receiver):
    clients = Clients(mesh, credentials)
    await clients.segmentation.CreateSegment(
        segmentation_service_pb2.CreateSegmentRequest(
            segment=segment_pb2.Segment(
                segment_id="big-spenders",
                name="Big spenders",
                condition=segment_pb2.Condition(
                    trait=segment_pb2.TraitCondition(
                        trait="ltv",
                        operator=segment_pb2.OPERATOR_GREATER_THAN,
                        value=struct_pb2.Value(number_value=1000),
                    )
                ),
            )
        )
    )
    await clients.delivery.CreateDestination(
        delivery_service_pb2.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="ads",
                name="Ads",
                webhook_url=webhook_receiver.url("/ads"),
                segment_id="big-spenders",
                purpose="advertising",
            )
        )
    )
    await clients.ingestion.Ingest(
        ingestion_service_pb2.IngestRequest(source_id="pos", events=[identify("u-2", ltv=5000)])
    )
    profile_id = await eventually(lambda: profile_of(clients, "u-2"))

    async def deliveries():
        answer = await clients.delivery.ListDeliveries(
            delivery_service_pb2.ListDeliveriesRequest(profile_id=profile_id)
        )
        return list(answer.deliveries)

    [record] = await eventually(deliveries)
    assert record.status == delivery_pb2.DELIVERY_STATUS_SUPPRESSED
    assert "advertising" in record.detail
    assert webhook_receiver.requests == []
    await clients.close()


def order(user_id: str, revenue: float, currency: str) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, user_id=user_id, event="Order Completed")
    event.properties.update({"revenue": revenue, "currency": currency})
    return event


async def test_a_segment_on_an_event_property_reads_a_series_the_profile_service_backfills(
    mesh, credentials, nats_server
):
    """Orders from before the segment count (the profile service backfills the series from its
    archive); the next one is summed in as it arrives and puts the person in. A segment true of
    a profile without orders waits for that backfill: the person who ordered never enters it."""
    clients = Clients(mesh, credentials)
    ingest = clients.ingestion.Ingest
    await ingest(ingestion_service_pb2.IngestRequest(source_id="web", events=[order("u-5", 60, "EUR")]))
    await ingest(ingestion_service_pb2.IngestRequest(source_id="web", events=[order("u-5", 500, "USD")]))
    await ingest(ingestion_service_pb2.IngestRequest(source_id="web", events=[identify("u-6", plan="free")]))
    profile_id = await eventually(lambda: profile_of(clients, "u-5"))
    other_id = await eventually(lambda: profile_of(clients, "u-6"))

    async def profile():
        try:
            return (
                await clients.profile.GetProfile(profile_service_pb2.GetProfileRequest(profile_id=profile_id))
            ).profile
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND  # not folded yet
            return None

    async def orders_folded():
        return (found := await profile()) is not None and found.event_count == 2

    await eventually(orders_folded)
    eur = 'sum(event "Order Completed".revenue where currency = "EUR" in last 30d)'
    for segment_id, definition in (("eur-spenders", f"{eur} >= 100"), ("eur-light", f"{eur} < 50")):
        await clients.segmentation.CreateSegment(
            segmentation_service_pb2.CreateSegmentRequest(
                segment=segment_pb2.Segment(segment_id=segment_id, name=segment_id, definition=definition)
            )
        )

    async def backfilled():
        return [(s.count, s.sum) for s in (await profile()).daily_series.values()]

    assert await eventually(backfilled) == [(1, 60.0)]  # the USD order is filtered out
    is_member = segmentation_service_pb2.IsMemberRequest(segment_id="eur-spenders", profile_id=profile_id)
    assert not (await clients.segmentation.IsMember(is_member)).member
    await ingest(ingestion_service_pb2.IngestRequest(source_id="web", events=[order("u-5", 45, "EUR")]))

    async def member():
        return (await clients.segmentation.IsMember(is_member)).member

    await eventually(member)
    light = segmentation_service_pb2.IsMemberRequest(segment_id="eur-light", profile_id=other_id)
    await eventually(lambda: _member(clients, light))  # the light segment's backfill ran
    moves = await _membership_moves(nats_server.url)
    assert (other_id, "eur-light", True) in moves
    assert [m for m in moves if m[:2] == (profile_id, "eur-light")] == []
    # An ad-hoc question on another series: the first ask defines it and says so.
    ask = segmentation_service_pb2.EstimateRequest(definition='max(event "Order Completed".revenue) > 400')
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.segmentation.Estimate(ask)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "backfill" in caught.value.details()

    async def estimated():
        try:
            return (await clients.segmentation.Estimate(ask)).count == 1
        except grpc.aio.AioRpcError:
            return False

    await eventually(estimated)
    await clients.close()


async def _member(clients: Clients, request: segmentation_service_pb2.IsMemberRequest) -> bool:
    return (await clients.segmentation.IsMember(request)).member


async def _membership_moves(nats_url: str) -> list[tuple[str, str, bool]]:
    """Every transition published on segment.membership: (profile, segment, entered)."""
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        stream = topics.SEGMENT_MEMBERSHIP.stream
        moves = []
        for seq in range(1, (await js.stream_info(stream)).state.last_seq + 1):
            stored = await js.get_msg(stream, seq)
            change = segment_membership_pb2.SegmentMembershipChanged.FromString(stored.data or b"")
            moves.append((change.profile_id, change.segment_id, change.change == ENTERED))
        return moves
    finally:
        await connection.close()


async def test_the_mesh_refuses_callers_without_credentials_or_scopes(mesh, credentials):
    request = profile_service_pb2.GetProfileRequest(profile_id="anyone")
    async with channel_to(mesh, "profile", credentials, token="") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await profile_service_pb2_grpc.ProfileServiceStub(channel).GetProfile(request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with channel_to(mesh, "identity", credentials, token="reader") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity_service_pb2_grpc.IdentityServiceStub(channel).UpdateRules(
                identity_service_pb2.UpdateRulesRequest()
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "local-reader lacks the scope identity:admin"


async def test_secrets_never_reach_logs_spans_or_answers(mesh, credentials, otlp_receiver, tmp_path):
    """A source's write key, the callers' tokens and the services' keys appear nowhere the
    mesh writes: not in its logs, not in the spans it exports, not in errors it answers."""
    clients = Clients(mesh, credentials)
    created = await clients.ingestion.CreateSource(
        ingestion_service_pb2.CreateSourceRequest(source=source_pb2.Source(source_id="web-shop", name="Web shop"))
    )
    write_key = created.source.write_keys[0].secret
    listed = await clients.ingestion.GetSource(ingestion_service_pb2.GetSourceRequest(source_id="web-shop"))
    assert write_key not in str(listed)
    token = f"{write_key}:".encode()
    body = json.dumps({"batch": [{"type": "identify", "userId": "leak-check", "traits": {"plan": "pro"}}]}).encode()
    for key in (token, b"wrong-key:"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{mesh.http_ports['ingestion']}/v1/batch",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(key).decode()},
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as refused:
            assert b"wrong-key" not in refused.read()
    await eventually(lambda: profile_of(clients, "leak-check"))
    forged = credentials.issue("intruder", ["profiles:read"], expired=True)
    async with platform_clients.channel(mesh.address("profile"), SecuritySettings(ca=str(credentials.ca))) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await profile_service_pb2_grpc.ProfileServiceStub(channel).GetProfile(
                profile_service_pb2.GetProfileRequest(profile_id="x"), metadata=(("authorization", f"Bearer {forged}"),)
            )
    assert forged not in caught.value.details()
    await clients.close()
    mesh.stop()  # flush every log and span
    secrets = {
        "write key": write_key,
        "forged token": forged,
        "admin token": credentials.token("admin").read_text(),
        "delivery token": credentials.token("delivery").read_text(),
        "service key": credentials.key("consent").read_text().splitlines()[1],
    }
    written = "".join(path.read_text(errors="replace") for path in (tmp_path / "logs").glob("*.log"))
    spans = "".join(str(export) for export in otlp_receiver.exports)
    assert "leak-check" in spans or "web-shop" in spans, "the spans of the walk were received"
    for name, secret in secrets.items():
        assert secret not in written, f"the {name} is in a log"
        assert secret not in spans, f"the {name} is in a span"
