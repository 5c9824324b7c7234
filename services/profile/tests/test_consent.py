"""The person's consent on the profile (from consent.changed, on a real nats-server) and traits
marked by purpose in the profile API: withheld where the person has not granted the purpose."""

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from mosaic.archive.v1 import event_archive_service_pb2, event_archive_service_pb2_grpc
from mosaic.consent.v1 import consent_pb2, privacy_pb2
from mosaic.events.v1 import (
    consent_changed_pb2,
    event_pb2,
    identity_changed_pb2,
    privacy_request_pb2,
    profile_updated_pb2,
    resolved_pb2,
)
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Delivery
from mosaic.platform.config import ConfigError
from mosaic.platform.privacy import merge_parts
from mosaic.platform.server import Service
from mosaic.profile.v1 import profile_pb2, profile_service_pb2_grpc
from mosaic.profile.v1 import profile_service_pb2 as pb
from mosaic.testing.plugin import eventually
from profile_service.app import build
from profile_service.config import Settings
from profile_service.consent import ConsentChanges
from profile_service.merges import MergeHandler
from profile_service.purposes import TraitPurposes
from profile_service.store import open_store

MARKS = "ad_*=advertising,favourite_colour=personalisation,favourite_*=analytics"


def decision(purpose: str, granted: bool, seconds: int = 100) -> consent_pb2.ConsentDecision:
    return consent_pb2.ConsentDecision(
        profile_id="p-ada", purpose=purpose, granted=granted, decided_at=timestamp_pb2.Timestamp(seconds=seconds)
    )


def notice(person: str, *decisions, jurisdiction=0, cause="decision") -> consent_changed_pb2.ConsentChanged:
    return consent_changed_pb2.ConsentChanged(
        person_id=person,
        profile_ids=[person],
        cause=cause,
        person=consent_pb2.PersonConsent(decisions=decisions, jurisdiction=jurisdiction),
    )


@pytest.fixture
async def service(make_settings):
    platform = make_settings("profile", MOSAIC_GRACE_SECONDS="1")
    settings = Settings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_PROFILE_TRAIT_PURPOSES": MARKS})
    settings = Settings(platform, (), 90, 90, 20, 1000, settings.policy, settings.trait_purposes)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield profile_service_pb2_grpc.ProfileServiceStub(channel)


@pytest.fixture
async def archive(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield event_archive_service_pb2_grpc.EventArchiveServiceStub(channel)


class Updates:
    """Every profile.updated the service publishes."""

    def __init__(self) -> None:
        self.seen: list[profile_updated_pb2.ProfileUpdated] = []

    async def listen(self, service: Service) -> None:
        async def on_message(msg) -> None:
            self.seen.append(profile_updated_pb2.ProfileUpdated.FromString(msg.data))

        assert service.runtime is not None
        await service.runtime.bus._nc.subscribe(topics.PROFILE_UPDATED.wildcard, cb=on_message)


async def identify(service, message_id: str, **traits) -> None:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id="ada", message_id=message_id)
    event.timestamp.GetCurrentTime()
    event.traits.update(traits)
    resolved = resolved_pb2.ResolvedEvent(
        profile_id="p-ada", event=event, identifiers=[identity_pb2.Identifier(type="user_id", value="ada")]
    )
    await service.runtime.bus.publish(topics.EVENTS_RESOLVED, "p-ada", resolved, message_id)


async def profile_of(stub, profile_id: str = "p-ada") -> profile_pb2.Profile | None:
    try:
        return (await stub.GetProfile(pb.GetProfileRequest(profile_id=profile_id))).profile
    except grpc.aio.AioRpcError:
        return None


async def test_a_notice_sets_the_persons_consent_as_a_new_version_announced_and_kept_in_history(service, stub):
    updates = Updates()
    await updates.listen(service)
    bus = service.runtime.bus
    await identify(service, "m-1", plan="pro")
    await eventually(lambda: profile_of(stub))
    change = notice("p-ada", decision("marketing", True), jurisdiction=consent_pb2.JURISDICTION_CCPA)
    await bus.publish(topics.CONSENT_CHANGED, "p-ada", change, "consent:c-1")
    profile = await eventually(lambda: _with_consent(stub))
    assert profile.version == 2 and profile.jurisdiction == consent_pb2.JURISDICTION_CCPA
    assert profile.consent["marketing"].granted and profile.traits["plan"].value.string_value == "pro"
    update = await eventually(lambda: next((u for u in updates.seen if u.version == 2), None))
    paths = {c.path: c for c in update.changes}
    assert set(paths) == {"consent.marketing", "jurisdiction"}
    assert paths["consent.marketing"].new_value.struct_value["change"] == "grant"
    assert paths["jurisdiction"].new_value.string_value == "JURISDICTION_CCPA"
    # The same notice again (another message id: JetStream would drop the same one) changes nothing.
    await bus.publish(topics.CONSENT_CHANGED, "p-ada", change, "consent:c-1-again")
    withdrawn = notice("p-ada", decision("marketing", False, 200), jurisdiction=consent_pb2.JURISDICTION_CCPA)
    await bus.publish(topics.CONSENT_CHANGED, "p-ada", withdrawn, "consent:c-2")
    profile = await eventually(lambda: _version(stub, 3))
    assert not profile.consent["marketing"].granted
    before = await stub.GetProfileAt(pb.GetProfileAtRequest(profile_id="p-ada", at=update.updated_at))
    assert before.profile.consent["marketing"].granted, "the history keeps what the person said then"


async def _with_consent(stub):
    profile = await profile_of(stub)
    return profile if profile is not None and profile.consent else None


async def _version(stub, version: int):
    profile = await profile_of(stub)
    return profile if profile is not None and profile.version == version else None


async def test_consent_known_before_any_event_makes_a_profile_of_it_alone(service, stub):
    await service.runtime.bus.publish(
        topics.CONSENT_CHANGED, "p-new", notice("p-new", decision("analytics", True)), "consent:c-new"
    )
    profile = await eventually(lambda: profile_of(stub, "p-new"))
    assert profile.version == 1 and profile.consent["analytics"].granted and profile.event_count == 0


async def test_traits_are_marked_by_purpose_and_withheld_until_the_person_grants_it(service, stub):
    updates = Updates()
    await updates.listen(service)
    await identify(service, "m-1", ad_id="idfa-123", favourite_colour="teal", favourite_film="Alien", plan="pro")
    profile = await eventually(lambda: profile_of(stub))
    traits = profile.traits
    # Under GDPR (the default law) every purpose is opt-in: nothing decided, all marked withheld.
    assert {n: (t.purpose, t.withheld) for n, t in traits.items()} == {
        "ad_id": ("advertising", True),
        "favourite_colour": ("personalisation", True),  # the exact name wins over favourite_*
        "favourite_film": ("analytics", True),
        "plan": ("", False),
    }
    assert not traits["ad_id"].HasField("value") and traits["plan"].value.string_value == "pro"
    first = await eventually(lambda: next((u for u in updates.seen if u.version == 1), None))
    assert set(first.traits.fields) == {"plan"}, "profile.updated carries what a read gives"
    assert {c.path for c in first.changes if c.withheld} == {
        "traits.ad_id",
        "traits.favourite_colour",
        "traits.favourite_film",
    }
    assert all(not c.HasField("new_value") for c in first.changes if c.withheld)
    granted = notice("p-ada", decision("personalisation", True), decision("advertising", False))
    await service.runtime.bus.publish(topics.CONSENT_CHANGED, "p-ada", granted, "consent:g-1")
    profile = await eventually(lambda: _with_consent(stub))
    assert profile.traits["favourite_colour"].value.string_value == "teal"
    assert not profile.traits["favourite_colour"].withheld
    assert profile.traits["ad_id"].withheld and not profile.traits["ad_id"].HasField("value")
    [batch] = (await stub.BatchGetProfiles(pb.BatchGetProfilesRequest(profile_ids=["p-ada"]))).profiles
    assert batch.traits["ad_id"].withheld and batch.traits["favourite_colour"].value.string_value == "teal"
    [scanned] = [
        r.profile async for r in stub.ScanProfiles(pb.ScanProfilesRequest()) if r.profile.profile_id == "p-ada"
    ]
    assert scanned.traits["ad_id"].withheld and not scanned.traits["ad_id"].HasField("value")
    assert scanned.traits["favourite_colour"].value.string_value == "teal"
    # The grant's update gives the trait back to a consumer's copy, and withholds the denied one.
    second = await eventually(lambda: next((u for u in updates.seen if u.version == 2), None))
    given = {c.path: c for c in second.changes if c.path.startswith("traits.")}
    assert set(given) == {"traits.ad_id", "traits.favourite_colour"}
    assert given["traits.favourite_colour"].new_value.string_value == "teal" and given["traits.ad_id"].withheld
    assert set(second.traits.fields) == {"plan", "favourite_colour"}
    upserted = await stub.UpsertTraits(
        pb.UpsertTraitsRequest(
            profile_id="p-ada", source_id="crm", request_id="u-1", traits=struct(ad_id="idfa-456", plan="max")
        )
    )
    assert upserted.profile.traits["ad_id"].withheld and upserted.profile.traits["plan"].value.string_value == "max"


def struct(**fields) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


async def test_the_history_and_the_archive_are_withheld_by_the_consent_of_now(service, stub, archive):
    bus = service.runtime.bus
    await identify(service, "m-1", ad_id="idfa-123", favourite_colour="teal")
    await eventually(lambda: profile_of(stub))
    grant = notice("p-ada", decision("personalisation", True), decision("advertising", True))
    await bus.publish(topics.CONSENT_CHANGED, "p-ada", grant, "consent:g-1")
    await eventually(lambda: _version(stub, 2))
    await identify(service, "m-2", ad_id="idfa-456", favourite_colour="red")
    await eventually(lambda: _version(stub, 3))
    # Withdrawn now: what was stored while both were granted is withheld too.
    withdrawn = notice("p-ada", decision("personalisation", True), decision("advertising", False, 200))
    await bus.publish(topics.CONSENT_CHANGED, "p-ada", withdrawn, "consent:w-1")
    await eventually(lambda: _version(stub, 4))
    snapshots = (await stub.ListSnapshots(pb.ListSnapshotsRequest(profile_id="p-ada"))).snapshots
    third = next(s for s in snapshots if s.version == 3)
    changes = {c.path: c for c in third.changes}
    assert changes["traits.ad_id"].withheld and not changes["traits.ad_id"].HasField("old_value")
    assert not changes["traits.ad_id"].HasField("new_value")
    assert changes["traits.favourite_colour"].new_value.string_value == "red"
    assert changes["traits.favourite_colour"].old_value.string_value == "teal"
    diff = {
        c.path: c
        for c in (
            await stub.DiffSnapshots(pb.DiffSnapshotsRequest(profile_id="p-ada", from_version=1, to_version=3))
        ).changes
    }
    assert diff["traits.ad_id"].withheld and not diff["traits.ad_id"].HasField("new_value")
    assert diff["traits.favourite_colour"].new_value.string_value == "red"
    then = next(s for s in snapshots if s.version == 3).recorded_at
    at = (await stub.GetProfileAt(pb.GetProfileAtRequest(profile_id="p-ada", at=then))).profile
    assert at.consent["advertising"].granted, "the history keeps what the person said then"
    assert at.traits["ad_id"].withheld and not at.traits["ad_id"].HasField("value")
    assert at.traits["favourite_colour"].value.string_value == "red"
    events = (await archive.ListEvents(event_archive_service_pb2.ListEventsRequest(profile_id="p-ada"))).events
    assert len(events) == 2 and all("ad_id" not in e.traits.fields for e in events)
    assert {e.traits["favourite_colour"] for e in events} == {"teal", "red"}
    # What is stored stays whole.
    store = await open_store(service.settings)
    try:
        [stored] = await store.snapshots("p-ada", 3, 3)
    finally:
        await store.close()
    assert {c.path: c.new_value.string_value for c in stored.snapshot.changes}["traits.ad_id"] == "idfa-456"


async def test_a_merged_away_profile_in_a_scan_is_withheld_by_its_survivors_consent(service, stub):
    bus = service.runtime.bus
    b = event("p-bea", "b1", "bea", ad_id="idfa-b")
    await bus.publish(topics.EVENTS_RESOLVED, "p-bea", b, "b1")
    await eventually(lambda: profile_of(stub, "p-bea"))
    await bus.publish(topics.CONSENT_CHANGED, "p-bea", notice("p-bea", decision("advertising", True)), "consent:b")
    await eventually(lambda: _scanned(stub, "p-bea", withheld=False))
    await bus.publish(topics.EVENTS_RESOLVED, "p-ada", event("p-ada", "a1", "ada", plan="pro"), "a1")
    await eventually(lambda: profile_of(stub, "p-ada"))
    merge = identity_changed_pb2.IdentityMerged(merge_id="m", survivor_profile_id="p-ada", merged_profile_ids=["p-bea"])
    await bus.publish(topics.IDENTITY_MERGED, "p-ada", merge, "m")
    await eventually(lambda: _has_trait(stub, "p-ada", "ad_id"))
    # The person withdraws after the merge: the notice goes to the survivor, not to p-bea's row.
    withdrawn = notice("p-ada", decision("advertising", False, 200))
    await bus.publish(topics.CONSENT_CHANGED, "p-ada", withdrawn, "consent:a")
    row = await eventually(lambda: _scanned(stub, "p-bea", withheld=True))
    assert not row.traits["ad_id"].HasField("value") and row.consent["advertising"].granted
    [merged] = (await stub.BatchGetProfiles(pb.BatchGetProfilesRequest(profile_ids=["p-bea"]))).profiles
    assert merged.traits["ad_id"].withheld


async def _scanned(stub, profile_id: str, withheld: bool):
    async for answer in stub.ScanProfiles(pb.ScanProfilesRequest()):
        trait = answer.profile.traits.get("ad_id")
        if answer.profile.profile_id == profile_id and trait is not None and trait.withheld == withheld:
            return answer.profile
    return None


async def _has_trait(stub, profile_id: str, name: str):
    profile = await profile_of(stub, profile_id)
    return profile if profile is not None and name in profile.traits else None


async def test_the_persons_own_export_keeps_every_value_and_says_its_purpose(service, stub):
    receipts: list[privacy_request_pb2.PrivacyReceipt] = []

    async def on_receipt(msg) -> None:
        receipts.append(privacy_request_pb2.PrivacyReceipt.FromString(msg.data))

    await service.runtime.bus._nc.subscribe(topics.PRIVACY_RECEIPT.wildcard, cb=on_receipt)
    await identify(service, "m-1", ad_id="idfa-123", plan="pro")
    assert (await eventually(lambda: profile_of(stub))).traits["ad_id"].withheld
    request = privacy_request_pb2.PrivacyRequested(
        request_id="x-1", kind=privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT, person_id="p-ada", profile_ids=["p-ada"]
    )
    await service.runtime.bus.publish(topics.PRIVACY_REQUESTED, "p-ada", request, "privacy:x-1")
    await eventually(lambda: any(r.final for r in receipts))
    document = merge_parts(r.export_json for r in sorted(receipts, key=lambda r: r.part))
    [exported] = document["profiles"]
    assert exported["traits"]["ad_id"] == {**exported["traits"]["ad_id"], "value": "idfa-123", "purpose": "advertising"}
    assert "withheld" not in exported["traits"]["ad_id"]


def test_a_bad_trait_purpose_names_the_variable_and_the_rule():
    for spec, rule in (("ad_id", "must be trait=purpose"), ("a*b=analytics", "must be"), ("x=telepathy", "telepathy")):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_PROFILE_TRAIT_PURPOSES": spec})
        assert caught.value.variable == "MOSAIC_PROFILE_TRAIT_PURPOSES" and rule in caught.value.rule


def test_an_expired_grant_withholds_again():
    settings = Settings.from_env({"MOSAIC_AUTH": "off"})
    purposes = TraitPurposes({"ad_*": "advertising"}, settings.policy)
    profile = profile_pb2.Profile(profile_id="p")
    profile.traits["ad_id"].value.string_value = "x"
    grant = decision("advertising", True)
    grant.expires_at.seconds = 1000
    profile.consent["advertising"].CopyFrom(grant)
    during, after = profile_pb2.Profile(), profile_pb2.Profile()
    during.CopyFrom(profile)
    after.CopyFrom(profile)
    purposes.of_profile(during, now_us=500 * 1_000_000).profile(during)
    purposes.of_profile(after, now_us=2000 * 1_000_000).profile(after)
    assert not during.traits["ad_id"].withheld and after.traits["ad_id"].withheld


def event(profile_id: str, message_id: str, user_id: str, **traits) -> resolved_pb2.ResolvedEvent:
    e = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=message_id, user_id=user_id)
    e.timestamp.GetCurrentTime()
    e.traits.update(traits)
    return resolved_pb2.ResolvedEvent(
        profile_id=profile_id, event=e, identifiers=[identity_pb2.Identifier(type="user_id", value=user_id)]
    )


async def test_a_split_keeps_each_sides_consent_whichever_comes_first(profiles):
    changes, merges = ConsentChanges(profiles), MergeHandler(profiles)
    await profiles.apply(event("A", "a1", "ada", plan="free"))
    await profiles.apply(event("B", "b1", "ada-phone", plan="pro"))
    await changes(notice("B", decision("advertising", False)), Delivery("x", 0, 1, 1, "consent:b"))
    merge = identity_changed_pb2.IdentityMerged(merge_id="m", survivor_profile_id="A", merged_profile_ids=["B"])
    await merges.merged(merge, Delivery("x", 0, 2, 1, "m"))
    both = notice("A", decision("advertising", False), decision("marketing", True))
    await changes(both, Delivery("x", 0, 3, 1, "consent:merge"))
    # consent saw the split first: each side's notice comes before the profile service's split.
    await changes(notice("A", decision("marketing", True)), Delivery("x", 0, 4, 1, "consent:split-a"))
    await changes(notice("B", decision("advertising", False)), Delivery("x", 0, 5, 1, "consent:split-b"))
    b = await profiles.store.latest("B")
    assert b.merged_into == "A", "a notice on a merged-away profile's row keeps it merged"
    split = identity_changed_pb2.IdentitySplit(
        merge_id="m", split_id="s", survivor_profile_id="A", restored_profile_ids=["B"]
    )
    await merges.split(split, Delivery("x", 0, 6, 1, "s"))
    a, b = (await profiles.store.latest("A")).profile, (await profiles.store.latest("B")).profile
    assert set(a.consent) == {"marketing"} and set(b.consent) == {"advertising"}
    assert a.traits["plan"].value.string_value == "free" and b.traits["plan"].value.string_value == "pro"


def test_a_change_of_jurisdiction_gives_every_marked_trait_again_in_the_update():
    settings = Settings.from_env({"MOSAIC_AUTH": "off"})
    purposes = TraitPurposes({"ad_*": "advertising", "favourite_colour": "personalisation"}, settings.policy)
    profile = profile_pb2.Profile(profile_id="p", jurisdiction=consent_pb2.JURISDICTION_CCPA)
    for name, value in (("ad_id", "x"), ("favourite_colour", "teal"), ("plan", "pro")):
        profile.traits[name].value.string_value = value
    moved = profile_pb2.FieldChange(path="jurisdiction")
    moved.new_value.string_value = "JURISDICTION_CCPA"
    changes, traits = purposes.of_profile(profile).update([moved], profile)
    # CCPA is opt-out: both purposes are granted by default now, so both traits come back.
    given = {c.path: c.new_value.string_value for c in changes if c.path.startswith("traits.")}
    assert given == {"traits.ad_id": "x", "traits.favourite_colour": "teal"}
    assert set(traits.fields) == {"ad_id", "favourite_colour", "plan"}
    profile.jurisdiction = consent_pb2.JURISDICTION_GDPR
    changes, traits = purposes.of_profile(profile).update([moved], profile)
    assert all(c.withheld and not c.HasField("new_value") for c in changes if c.path.startswith("traits."))
    assert set(traits.fields) == {"plan"}


async def test_a_redelivered_notice_publishes_its_version_again_and_writes_nothing(profiles):
    """A crash after the write and before the publish: the redelivery publishes the stored version."""
    seen: list[profile_updated_pb2.ProfileUpdated] = []

    async def on_message(msg) -> None:
        seen.append(profile_updated_pb2.ProfileUpdated.FromString(msg.data))

    await profiles.bus._nc.subscribe(topics.PROFILE_UPDATED.wildcard, cb=on_message)
    changes = ConsentChanges(profiles)
    await profiles.apply(event("R", "r1", "rita", plan="pro"))
    granted = notice("R", decision("marketing", True))
    await changes(granted, Delivery("x", 0, 1, 1, "consent:r"))
    await changes(granted, Delivery("x", 0, 1, 2, "consent:r"))  # the same message, delivered again
    again = await eventually(lambda: [u for u in seen if u.version == 2] if len(seen) >= 3 else None)
    assert len(again) == 2 and again[0] == again[1], "the same version, published again as it was"
    assert {c.path for c in again[1].changes} == {"consent.marketing"}
    assert again[1].traits["plan"] == "pro"
    assert (await profiles.store.latest("R")).profile.version == 2
