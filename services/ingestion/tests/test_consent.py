"""Consent at the door, on a real nats-server: what a purpose forbids is dropped or stripped,
by the event's own consent, the person's recorded decisions (from the real consent and
identity services through consent.changed) or the jurisdiction's default; the door never
waits for the consent service, and a notice waits for identity when identity is down."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
from google.protobuf import struct_pb2

from consent_service.app import build as build_consent
from consent_service.config import Settings as ConsentSettings
from identity_service.app import build as build_identity
from identity_service.config import Settings as IdentitySettings
from ingestion_service.config import Settings
from mosaic.consent.v1 import consent_pb2, consent_service_pb2, consent_service_pb2_grpc
from mosaic.events.v1 import event_pb2
from mosaic.events.v1 import suppression_changed_pb2 as sc
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc
from mosaic.platform.config import ConfigError
from mosaic.platform.server import Service
from mosaic.testing.plugin import eventually

from .test_suppression import publish

RULES = json.dumps(
    {
        "analytics": {"drop": ["track", "page"]},
        "advertising": {"strip": ["context.device.advertisingId", "context.ip"]},
    }
)
S = pb.EventStatus


def event(kind: str = "track", user_id: str = "", anonymous_id: str = "", consent: dict | None = None):
    built = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_TRACK if kind == "track" else event_pb2.EVENT_TYPE_IDENTIFY,
        event="Product Viewed" if kind == "track" else "",
        user_id=user_id,
        anonymous_id=anonymous_id,
        message_id=uuid.uuid4().hex,
    )
    built.context.update({"device": {"advertisingId": "idfa-1", "model": "phone"}, "ip": "198.51.100.7"})
    if consent is not None:
        built.context["consent"] = struct_pb2.Struct()
        built.context.fields["consent"].struct_value.update(consent)
    return built


async def ingest(stub, *events) -> list[pb.EventResult]:
    return list((await stub.Ingest(pb.IngestRequest(source_id="web", events=events))).results)


def test_bad_rules_name_the_variable_and_the_rule():
    for spec, rule in (
        ("{", "must be JSON"),
        ('{"telepathy": {"drop": ["track"]}}', "'telepathy' is not a configured purpose"),
        ('{"analytics": {"drop": ["clicks"]}}', "analytics.drop: must list event types"),
        ('{"analytics": {"strip": ["device.id"]}}', "must be a dotted path under context"),
        ('{"analytics": {"keep": []}}', "must be an object with drop and/or strip"),
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_INGEST_CONSENT_RULES": spec})
        assert caught.value.variable == "MOSAIC_INGEST_CONSENT_RULES" and rule in caught.value.rule, caught.value


async def test_nobody_decided_so_the_jurisdictions_default_rules_and_the_events_own_consent_wins(
    start_ingestion, stored
):
    gdpr = await start_ingestion(MOSAIC_INGEST_CONSENT_RULES=RULES)
    async with grpc.aio.insecure_channel(gdpr.grpc_address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        track, identify = event(anonymous_id="a-1"), event("identify", anonymous_id="a-1")
        granted = event(anonymous_id="a-2", consent={"categoryPreferences": {"Analytics": True, "C0004": True}})
        refused_ads = event(
            "identify", anonymous_id="a-3", consent={"categoryPreferences": {"advertising": True}, "gpc": True}
        )
        results = await ingest(stub, track, identify, granted, refused_ads)
    # GDPR (the default law) is opt-in: no analytics, so the track event is not stored at all.
    assert results[0].status == S.EVENT_STATUS_SUPPRESSED
    assert results[0].reason == "consent: analytics not granted (opt-in default)"
    assert [r.status for r in results[1:]] == [S.EVENT_STATUS_ACCEPTED] * 3
    kept = {e.anonymous_id: e for _, e in await stored()}
    assert set(kept) == {"a-1", "a-2", "a-3"}
    # No advertising either: its fields are stripped, the rest of the context kept.
    assert "advertisingId" not in kept["a-1"].context["device"] and "ip" not in kept["a-1"].context
    assert kept["a-1"].context["device"]["model"] == "phone"
    # The event's own preferences (a category unknown to the deployment ignored) grant analytics;
    # advertising is not among them: still stripped.
    assert "advertisingId" not in kept["a-2"].context["device"]
    # The GPC signal outranks the event's own grant of a sale purpose.
    assert "ip" not in kept["a-3"].context


async def test_under_ccpa_the_default_keeps_everything(start_ingestion, stored):
    ccpa = await start_ingestion(MOSAIC_INGEST_CONSENT_RULES=RULES, MOSAIC_CONSENT_JURISDICTION="ccpa")
    async with grpc.aio.insecure_channel(ccpa.grpc_address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        assert [r.status for r in await ingest(stub, event(anonymous_id="c-1"))] == [S.EVENT_STATUS_ACCEPTED]
    [(_, kept)] = await stored()
    assert kept.context["device"]["advertisingId"] == "idfa-1"


@pytest.fixture
async def identity_service(make_settings):
    settings = IdentitySettings(make_settings("identity", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="4"))
    service = Service(settings.platform, lambda runtime: build_identity(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def consent_service(make_settings):
    settings = ConsentSettings(make_settings("consent", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="4"))
    service = Service(settings.platform, lambda runtime: build_consent(runtime, settings))
    await service.start()
    yield service
    await service.stop()


async def person_of(identity_service, user_id: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_service.port}") as channel:
        stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        try:
            answer = await stub.Lookup(
                identity_service_pb2.LookupRequest(identifier=identity_pb2.Identifier(type="user_id", value=user_id))
            )
        except grpc.aio.AioRpcError:
            return ""
        return answer.profile_id


async def decide(consent_service, profile_id: str, purpose: str, granted: bool) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{consent_service.port}") as channel:
        await consent_service_pb2_grpc.ConsentServiceStub(channel).SetConsent(
            consent_service_pb2.SetConsentRequest(
                decision=consent_pb2.ConsentDecision(profile_id=profile_id, purpose=purpose, granted=granted)
            )
        )


async def status(stub, **ids) -> int:
    return (await ingest(stub, event(**ids)))[0].status


async def test_a_persons_decisions_reach_the_door_and_outages_lose_nothing(
    start_ingestion, identity_service, consent_service, make_settings, nats_server
):
    running = await start_ingestion(
        MOSAIC_INGEST_CONSENT_RULES=RULES, MOSAIC_IDENTITY_ADDRESS=f"127.0.0.1:{identity_service.port}"
    )
    async with grpc.aio.insecure_channel(running.grpc_address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        # Identify links the user id and the device to one person (identity consumes events.raw).
        await ingest(stub, event("identify", user_id="ada", anonymous_id="ada-phone"))
        person = await eventually(lambda: person_of(identity_service, "ada"))
        assert await status(stub, user_id="ada") == S.EVENT_STATUS_SUPPRESSED  # GDPR default
        await decide(consent_service, person, "analytics", True)
        # consent.changed → ingestion asks identity for the person's ids → kept by their hashes.
        await eventually(lambda: _is(status(stub, user_id="ada"), S.EVENT_STATUS_ACCEPTED))
        assert await status(stub, anonymous_id="ada-phone") == S.EVENT_STATUS_ACCEPTED  # the device too
        assert await status(stub, anonymous_id="someone-else") == S.EVENT_STATUS_SUPPRESSED

        # The consent service goes away: the door does not ask it, nothing is refused for it.
        await consent_service.stop()
        assert await status(stub, user_id="ada") == S.EVENT_STATUS_ACCEPTED

        # Identity goes away while a withdrawal is announced: the notice waits in its stream.
        port = identity_service.port
        settings = ConsentSettings(make_settings("consent", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="4"))
        consent_again = Service(settings.platform, lambda runtime: build_consent(runtime, settings))
        await consent_again.start()
        try:
            await identity_service.stop()
            await decide(consent_again, person, "analytics", False)
            assert await status(stub, user_id="ada") == S.EVENT_STATUS_ACCEPTED  # as last known
            identity = IdentitySettings(
                make_settings("identity", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="4", MOSAIC_GRPC_PORT=str(port))
            )
            identity_again = Service(identity.platform, lambda runtime: build_identity(runtime, identity))
            await identity_again.start()
            try:
                await eventually(lambda: _is(status(stub, user_id="ada"), S.EVENT_STATUS_SUPPRESSED), timeout=60)
                # An erasure takes the person's kept consent away with the rest.
                hashes = [running.parts.suppression.hash("user_id", "ada")]
                assert await running.parts.consent.people.store.consent_states(hashes)
                erase = sc.SuppressionChanged(
                    profile_id=person,
                    request_id="r-1",
                    identifiers=[sc.SuppressedIdentifier(type="user_id", value="ada")],
                )
                await publish(nats_server.url, erase, "erase-ada")
                await eventually(lambda: _empty(running.parts.consent.people.store.consent_states(hashes)))
            finally:
                await identity_again.stop()
        finally:
            await consent_again.stop()


async def _is(found, expected) -> bool:
    return await found == expected


async def _empty(found) -> bool:
    return not await found
