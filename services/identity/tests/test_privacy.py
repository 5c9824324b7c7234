"""The identity service's part in privacy requests, on a real nats-server and each store: a
person merged from two profiles is exported, then erased; no table names them afterwards, and
the receipt lists the identifiers for suppression."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from identity_service.app import build, components
from identity_service.config import Settings
from identity_service.erasures import Erasures
from identity_service.privacy import IdentityPrivacy
from identity_service.resolver import Erased, Resolver, Retry, now_ms, profile_id_for
from identity_service.sightings import Sightings
from identity_service.store import Claim, Member, open_store
from mosaic.consent.v1 import privacy_pb2
from mosaic.events.v1 import event_pb2, privacy_request_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2_grpc
from mosaic.identity.v1 import identity_service_pb2 as pb
from mosaic.platform import topics
from mosaic.platform.privacy import merge_parts
from mosaic.platform.server import Service
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.testing.plugin import eventually
from mosaic.testing.relay import Link
from mosaic.testing.scan import messages_mentioning, rows_mentioning


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


class Resolved:
    """The events.resolved messages published, by event id."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}  # event id → profile id

    async def listen(self, service) -> None:
        async def on_message(msg) -> None:
            message = resolved_pb2.ResolvedEvent.FromString(msg.data)
            self.seen[message.event.message_id] = message.profile_id

        await service.runtime.bus._nc.subscribe(topics.EVENTS_RESOLVED.wildcard, cb=on_message)


async def erased_dora(service, receipts: Receipts, resolved: Resolved) -> str:
    """Dora (a user id, an e-mail, a device's anonymous id) resolved, then erased; her profile id."""
    await send(service, event("dora-1", user_id="dora", email="dora@example.com", anonymous_id="anon-dora"))
    dora = await eventually(lambda: resolved.seen.get("dora-1"))
    await ask(service, "erase-dora", privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, dora)
    await eventually(lambda: receipts.final("erase-dora"))
    return dora


async def test_an_event_for_an_erased_identifier_after_the_erasure_makes_no_profile_and_stays_dropped(service):
    receipts, resolved = Receipts(), Resolved()
    await receipts.listen(service)
    await resolved.listen(service)
    await send(service, event("gus-1", user_id="gus"))
    gus = await eventually(lambda: lookup(service, "user_id", "gus"))
    await erased_dora(service, receipts, resolved)
    bus = service.runtime.bus
    # After identity's part, before ingestion suppresses it: the device's anonymous id alone
    # (it would make a new profile), and with a known person's id (it would join Gus).
    late = event("late-dora-device", anonymous_id="anon-dora")
    shared = event("late-dora-shared", user_id="gus", anonymous_id="anon-dora")
    await bus.publish(topics.EVENTS_RAW, "anon-dora", late, "late-dora-device")
    await bus.publish(topics.EVENTS_RAW, "anon-dora", shared, "late-dora-shared")
    await bus.publish(topics.EVENTS_RAW, "anon-dora", late, "late-dora-device-again")  # redelivered
    # A never-erased new identifier, after them on their key, resolves as ever; once it has,
    # they were handled.
    await bus.publish(topics.EVENTS_RAW, "anon-dora", event("carol-1", anonymous_id="anon-carol"), "carol-1")
    carol = await eventually(lambda: resolved.seen.get("carol-1"))
    assert await lookup(service, "anonymous_id", "anon-carol") == carol
    assert carol not in (gus, profile_id_for("late-dora-device"))
    assert "late-dora-device" not in resolved.seen and "late-dora-shared" not in resolved.seen
    assert await lookup(service, "anonymous_id", "anon-dora") == ""
    assert await lookup(service, "user_id", "gus") == gus
    # Nor is either left in events.raw, naming the person.
    await eventually(lambda: _none_left(service, ["late-dora-"]))
    store = await open_store(service.settings)
    try:
        assert await rows_mentioning(store.db, ["anon-dora", profile_id_for("late-dora-device")]) == []
        assert await rows_mentioning(store.db, [carol])
    finally:
        await store.close()


async def _none_left(service, needles: list[str]) -> bool:
    return await messages_mentioning(service.settings.nats_url, needles) == []


@pytest.fixture
async def parts(store_settings):
    """Identity's parts on one store (each backend), without the bus."""
    store = await open_store(store_settings)
    settings = Settings(store_settings)
    resolver, rules, events = components(store, settings)
    yield store, resolver, rules, IdentityPrivacy(store, resolver, events.sightings)
    await store.close()


def _identifiers(**kinds: str) -> list[identity_pb2.Identifier]:
    return [identity_pb2.Identifier(type=t, value=v) for t, v in kinds.items()]


async def test_a_claim_made_while_the_erasure_runs_is_removed_by_it(parts):
    store, resolver, rules, privacy = parts
    rules = await rules.get()
    erin = (await resolver.resolve(_identifiers(user_id="erin"), rules, event_id="erin-1", at=1)).profile_id

    # Two resolutions in flight as the erasure reads Erin's identifiers: each had written its
    # member row, and claims once the erasure has read the claims, before its tombstones: too
    # early to see them, too late to be among the claims it removes.
    newcomer = profile_id_for("in-flight")
    await store.add_members(erin, [Member("anonymous_id", "anon-erin", 2, "erin-2", "web")])
    await store.add_members(erin, [Member("anonymous_id", "anon-tab", 2, "erin-3", "web")])

    async def claims_in_flight() -> None:
        await store.claim(("anonymous_id", "anon-erin"), Claim(erin, "erin-2", 2, "web"))
        await store.claim(("anonymous_id", "anon-tab"), Claim(newcomer, "in-flight", 2, "web"))
        await store.add_members(newcomer, [Member("anonymous_id", "anon-tab", 2, "in-flight", "web")])

    privacy.resolver.erasures = Erasures(BeforeTombstones(store, claims_in_flight))
    request = privacy_request_pb2.PrivacyRequested(request_id="erase-erin", person_id=erin)
    answer = await privacy.erase(request)

    assert await store.claims([("user_id", "erin"), ("anonymous_id", "anon-erin"), ("anonymous_id", "anon-tab")]) == {}
    assert answer.counts["identity_claims"] == 3
    assert (await store.members([newcomer]))[newcomer] == []
    assert await rows_mentioning(store.db, ["anon-erin", "anon-tab", "\terin"]) == []


class BeforeTombstones:
    """A store whose tombstones are written just after `before` runs (an interleaving)."""

    def __init__(self, store, before) -> None:
        self._store = store
        self._before = before

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    async def record_erasures(self, hashes, at: int) -> None:
        await self._before()
        await self._store.record_erasures(hashes, at)


async def test_resolutions_racing_the_erasure_leave_no_claim_and_no_new_profile(parts):
    store, resolver, rules, privacy = parts
    rules = await rules.get()
    fay = (
        await resolver.resolve(_identifiers(user_id="fay", anonymous_id="anon-fay"), rules, event_id="fay-1", at=1)
    ).profile_id
    request = privacy_request_pb2.PrivacyRequested(request_id="erase-fay", person_id=fay)

    async def late(n: int) -> str:
        replica = Resolver(store)  # a replica whose caches do not hold her
        try:
            return (
                await replica.resolve(_identifiers(anonymous_id="anon-fay"), rules, event_id=f"late-{n}", at=9)
            ).profile_id
        except Erased:
            return "dropped"

    async def partition() -> list[str]:  # events of one key, in order, as one partition runs them
        found = []
        for n in range(20):
            await asyncio.sleep(0.001)  # spread over the erasure's steps
            found.append(await late(n))
        return found

    _, found = await asyncio.gather(privacy.erase(request), partition())
    found.append(await late(20))  # and one after it
    # Before the claims went, an event still found Fay (her profile id, which the profile
    # service drops as erased); after, none made a profile.
    assert set(found) <= {fay, "dropped"} and found[-1] == "dropped"
    assert await store.claims([("anonymous_id", "anon-fay")]) == {}
    assert await store.profiles([profile_id_for(f"late-{n}") for n in range(21)]) == {}
    assert await rows_mentioning(store.db, ["anon-fay", "\tfay"]) == []


async def test_another_replica_hears_the_erasure_and_resolves_and_sights_nothing_of_the_person(service):
    """Replica B (its own resolver, caches and sightings, hearing the bus like the service) knew
    Hana before replica A, the service, erased her; afterwards B resolves her identifiers to
    nobody and writes no sighting of her, not even the one it held pending from before."""
    receipts = Receipts()
    await receipts.listen(service)
    store = await open_store(service.settings)
    try:
        resolver, rules, events = components(store, Settings(service.settings, sightings_flush_seconds=3600))
        replica = IdentityPrivacy(store, resolver, events.sightings)
        await service.runtime.bus.listen(topics.PRIVACY_REQUESTED, replica.heard)
        hana = (await events.resolve(event("hana-1", user_id="hana", anonymous_id="anon-hana"))).profile_id
        await events.resolve(event("hana-2", user_id="hana", anonymous_id="anon-hana"))  # a sighting pending
        assert resolver.home_of(("user_id", "hana")) == hana

        await ask(service, "erase-hana", privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, hana)
        await eventually(lambda: receipts.final("erase-hana"))
        await eventually(lambda: hana in resolver.erased_profiles)

        with pytest.raises(Erased):
            await events.resolve(event("hana-3", user_id="hana", anonymous_id="anon-hana"))
        with pytest.raises(Erased):  # a new browser of hers makes nothing either
            await events.resolve(event("hana-4", user_id="hana", anonymous_id="anon-hana-tablet"))
        assert resolver.home_of(("user_id", "hana")) is None and resolver.home_of(("anonymous_id", "anon-hana")) is None
        await events.sightings.flush()
        assert await rows_mentioning(store.db, [hana, "anon-hana", "\thana"]) == []
    finally:
        await store.close()


async def test_a_sighting_a_replica_flushed_after_the_erasure_is_removed_when_it_hears_it(parts, store_settings):
    store, resolver, rules, privacy = parts
    rules = await rules.get()
    ivy = (await resolver.resolve(_identifiers(user_id="ivy"), rules, event_id="ivy-1", at=1)).profile_id
    request = privacy_request_pb2.PrivacyRequested(
        request_id="erase-ivy", kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, person_id=ivy
    )
    await privacy.erase(request)
    # A replica slower to hear: it writes the sighting it held of her after her rows went.
    _, _, late = components(store, Settings(store_settings))
    ahead = now_ms() + 60_000  # the event's time, by a client's clock ahead of ours
    late.sightings.seen({("user_id", "ivy"): ivy}, ahead)
    await late.sightings.flush()
    # SQLite keeps it; Cassandra's deletion was stamped beyond any event's time, so hides it already.
    hidden = isinstance(store.db, CassandraStore)
    assert await store.last_seen([ivy]) == ({} if hidden else {("user_id", "ivy"): ahead})

    replica = IdentityPrivacy(store, late.resolver, late.sightings)
    replica.heard(request)
    await asyncio.gather(*replica._heard)
    assert await store.last_seen([ivy]) == {}
    assert await rows_mentioning(store.db, ["\tivy", ivy]) == []


async def test_an_identifier_linked_while_the_erasure_runs_waits_for_it_and_keeps_no_claim(parts):
    """An event bringing Jay's new tablet, resolved after the erasure read Jay's identifiers
    (under the erasure's locks): it cannot link the tablet then, and after the erasure it is
    an event of an erased person (dropped)."""
    store, resolver, rules, privacy = parts
    rules = await rules.get()
    jay = (await resolver.resolve(_identifiers(user_id="jay"), rules, event_id="jay-1", at=1)).profile_id
    replica = Resolver(store)  # another replica, which has not heard of the erasure
    tablet = _identifiers(user_id="jay", anonymous_id="anon-jay-tablet")
    keys = [(i.type, i.value) for i in tablet]
    outcomes: list[str] = []

    async def while_erasing() -> None:  # the erasure has the person's members in hand
        try:
            await replica._attempt(tablet, keys, rules, "jay-2", 2, "web", "", cached=False)
            outcomes.append("linked")
        except Retry:
            outcomes.append("held back")

    privacy.store = AfterMembers(store, while_erasing)
    request = privacy_request_pb2.PrivacyRequested(request_id="erase-jay", person_id=jay)
    await privacy.erase(request)

    assert outcomes == ["held back"]
    with pytest.raises(Erased):  # redone after the erasure
        await replica.resolve(tablet, rules, event_id="jay-2", at=2)
    assert await store.claims(keys) == {}
    assert await store.profiles([jay, profile_id_for("jay-2")]) == {}
    assert await rows_mentioning(store.db, ["anon-jay-tablet", "\tjay", jay]) == []


class AfterMembers:
    """A store that runs `during` once, after the first read of members (an interleaving)."""

    def __init__(self, store, during) -> None:
        self._store = store
        self._during = during

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    async def members(self, profile_ids):
        found = await self._store.members(profile_ids)
        during, self._during = self._during, None
        if during is not None:
            await during()
        return found


async def test_a_replica_that_missed_the_erasure_cannot_link_to_the_erased_profile(parts):
    """Its caches still hold Kim's claim and root (the notice is at most once): an event with a
    new identifier of hers finds her root's row gone, and a tombstone for her profile id, so it
    adopts nothing and is dropped."""
    store, resolver, rules, privacy = parts
    rules = await rules.get()
    kim = (await resolver.resolve(_identifiers(user_id="kim"), rules, event_id="kim-1", at=1)).profile_id
    missed = Resolver(store)
    assert (await missed.resolve(_identifiers(user_id="kim"), rules, event_id="kim-2", at=2)).profile_id == kim
    await privacy.erase(privacy_request_pb2.PrivacyRequested(request_id="erase-kim", person_id=kim))

    with pytest.raises(Erased):
        await missed.resolve(_identifiers(user_id="kim", email="kim@example.com"), rules, event_id="kim-3", at=3)
    assert await store.profiles([kim]) == {}
    assert await store.claims([("email", "kim@example.com")]) == {}
    assert await rows_mentioning(store.db, ["kim@example.com", "\tkim"]) == []


@pytest.mark.parametrize("completed", [False, True], ids=["in-flight", "completed"])
async def test_a_replica_disconnected_when_the_erasure_went_out_refuses_the_person_once_back(service, completed):
    """Replica B's connection is down while Lena is erased: it never hears the notice. Once back
    it resolves her known identifiers (claims and root cached before) to nobody, whether the
    request is still in privacy.requested or complete and gone from the stream (consent erases it
    then: here the test purges the stream)."""
    from mosaic.platform.bus import Bus

    who = f"lena-{completed}"  # the two runs may share a keyspace

    receipts = Receipts()
    await receipts.listen(service)
    link = Link(service.settings.nats_url)
    store = await open_store(service.settings)
    bus = await Bus.connect(await link.start(), "identity", 2)
    try:
        resolver, rules, events = components(store, Settings(service.settings, sightings_flush_seconds=3600))
        replica = IdentityPrivacy(store, resolver, events.sightings)
        await replica.follow(bus)
        lena = (await events.resolve(event(f"{who}-1", user_id=who, anonymous_id=f"anon-{who}"))).profile_id
        assert resolver.home_of(("user_id", who)) == lena

        link.cut()
        await eventually(lambda: not bus.connected)
        await ask(service, f"erase-{who}", privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, lena)
        await eventually(lambda: receipts.final(f"erase-{who}"))
        if completed:
            await service.runtime.bus.jetstream.purge_stream(topics.PRIVACY_REQUESTED.stream)
        assert lena not in resolver.erased_profiles and resolver.home_of(("user_id", who)) == lena

        link.restore()
        await eventually(lambda: bus.connected)
        await eventually(lambda: resolver.home_of(("user_id", who)) is None)
        await asyncio.gather(*replica._heard)
        with pytest.raises(Erased):
            await events.resolve(event(f"{who}-2", user_id=who, anonymous_id=f"anon-{who}"))
        with pytest.raises(Erased):
            await events.resolve(event(f"{who}-3", anonymous_id=f"anon-{who}"))
    finally:
        await bus.close()
        await link.close()
        await store.close()


async def test_a_profile_merged_into_the_person_unnamed_and_gone_before_the_walk_is_refused(parts):
    """Ann's browser profile was merged into her user profile; the request names only the
    survivor, and this replica hears it after the erasure removed every row (its walk finds no
    child), its root cache no longer holding the browser's profile: the cached claim of the
    browser names a profile whose row is gone, and its tombstone refuses it."""
    store, resolver, rules, privacy = parts
    rules = await rules.get()
    browser = (await resolver.resolve(_identifiers(anonymous_id="anon-ann"), rules, event_id="ann-1", at=1)).profile_id
    user = (await resolver.resolve(_identifiers(user_id="ann"), rules, event_id="ann-2", at=2)).profile_id
    both = await resolver.resolve(_identifiers(user_id="ann", anonymous_id="anon-ann"), rules, event_id="ann-3", at=3)
    survivor = both.profile_id
    merged = browser if survivor == user else user
    key = ("anonymous_id", "anon-ann") if merged == browser else ("user_id", "ann")
    identifier = _identifiers(**{key[0]: key[1]})

    replica = Resolver(store)
    heard = IdentityPrivacy(store, replica, Sightings(store, 3600, erased=replica.erased_profiles))
    assert (await replica.resolve(identifier, rules, event_id="ann-4", at=4)).profile_id == survivor
    assert replica.home_of(key) == merged
    replica.root_cache.forget([merged])  # aged out

    request = privacy_request_pb2.PrivacyRequested(
        request_id="erase-ann", kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, person_id=survivor
    )
    await privacy.erase(request)
    heard.heard(request)
    await asyncio.gather(*heard._heard)
    assert merged not in replica.erased_profiles  # its walk found nothing left to join

    with pytest.raises(Erased):
        await replica.resolve(identifier, rules, event_id="ann-5", at=5)
    assert merged in replica.erased_profiles and replica.home_of(key) is None
