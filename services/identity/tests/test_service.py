"""The identity service in-process on a real nats-server: events.raw in, the gRPC API out."""

import grpc
import pytest

from identity_service.app import build
from identity_service.config import Settings
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2_grpc
from mosaic.identity.v1 import identity_service_pb2 as pb
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.server import Service
from mosaic.testing.plugin import eventually


@pytest.fixture
async def service(make_settings):
    platform = make_settings("identity", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="2")
    settings = Settings(platform, rules_max_age=0.0)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield identity_service_pb2_grpc.IdentityServiceStub(channel)


@pytest.fixture
async def bus(service):
    bus = await Bus.connect(service.settings.nats_url, "test", service.settings.partitions)
    yield bus
    await bus.close()


async def stored(bus: Bus, topic: topics.Topic) -> list:
    info = await bus._js.stream_info(topic.stream)
    return [
        topic.message.FromString((await bus._js.get_msg(topic.stream, seq)).data or b"")  # None: an empty payload
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
        if info.state.messages
    ]


def event(message_id: str, **fields) -> event_pb2.Event:
    email = fields.pop("email", None)
    built = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=message_id, source_id="web", **fields)
    if email:
        built.traits.update({"email": email})
    built.timestamp.GetCurrentTime()
    return built


async def send(bus: Bus, *events: event_pb2.Event) -> None:
    for one in events:
        await bus.publish(topics.EVENTS_RAW, one.user_id or one.anonymous_id, one, one.message_id)


async def lookup(stub, id_type: str, value: str) -> str:
    try:
        answer = await stub.Lookup(pb.LookupRequest(identifier=identity_pb2.Identifier(type=id_type, value=value)))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return ""
    return answer.profile_id


async def test_a_merge_is_published_explained_and_undone_by_a_split(stub, bus):
    await send(bus, event("m1", anonymous_id="a1"), event("m2", anonymous_id="a2", email="x@example.com"))
    first = await eventually(lambda: lookup(stub, "anonymous_id", "a1"))
    second = await eventually(lambda: lookup(stub, "email", "X@Example.com"))
    await send(bus, event("m3", anonymous_id="a1", email="x@example.com"))
    merged = await eventually(lambda: stored(bus, topics.IDENTITY_MERGED))
    assert merged[0].survivor_profile_id == first and list(merged[0].merged_profile_ids) == [second]
    assert {(i.type, i.value) for i in merged[0].moved_identifiers} == {
        ("anonymous_id", "a2"),
        ("email", "x@example.com"),
    }
    assert (merged[0].cause_event_id, merged[0].rule) == ("m3", "shared email")

    answer = await stub.Resolve(
        pb.ResolveRequest(
            identifiers=[
                identity_pb2.Identifier(type="anonymous_id", value="a2"),
                identity_pb2.Identifier(type="user_id", value="nobody"),
            ]
        )
    )
    assert [(m.identifier.value, m.profile_id) for m in answer.matches] == [("a2", first)]
    identities = await stub.GetIdentities(pb.GetIdentitiesRequest(profile_id=second))
    assert identities.profile_id == first, "a merged-away profile id answers with the survivor"
    assert {i.identifier.value: i.home_profile_id for i in identities.identities} == {
        "a1": first,
        "a2": second,
        "x@example.com": second,
    }
    assert all(i.source == "web" and i.last_seen.seconds for i in identities.identities)
    later = event("m4", anonymous_id="a1")
    later.timestamp.FromSeconds(later.timestamp.seconds + 3600)
    await send(bus, later)

    async def a1_seen_later():
        found = await stub.GetIdentities(pb.GetIdentitiesRequest(profile_id=first))
        return {i.identifier.value: i.last_seen.seconds for i in found.identities}["a1"] == later.timestamp.seconds

    await eventually(a1_seen_later)  # written behind, flushed for the answer
    explained = await stub.ExplainProfile(pb.ExplainProfileRequest(profile_id=first))
    why = {e.identity.identifier.value: e for e in explained.identifiers}
    assert why["a1"].path == [] and why["a2"].path[0].merge_id == merged[0].merge_id
    assert "shared email" in why["a2"].reason

    split = await stub.SplitProfile(pb.SplitProfileRequest(merge_id=merged[0].merge_id, reason="wrong merge"))
    assert list(split.restored_profile_ids) == [second]
    assert await lookup(stub, "anonymous_id", "a2") == second
    published = await eventually(lambda: stored(bus, topics.IDENTITY_SPLIT))
    assert published[0].merge_id == merged[0].merge_id and published[0].reason == "wrong merge"
    history = await stub.GetMergeHistory(pb.GetMergeHistoryRequest(profile_id=first))
    assert [(m.merge_id, m.split_reason) for m in history.merges] == [(merged[0].merge_id, "wrong merge")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SplitProfile(pb.SplitProfileRequest(merge_id=merged[0].merge_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_events_resolved_carry_the_profile_and_the_normalised_identifiers(stub, bus):
    await send(bus, event("m1", user_id="u1", email="Ada@Example.com"))
    found = await eventually(lambda: stored(bus, topics.EVENTS_RESOLVED))
    resolved: resolved_pb2.ResolvedEvent = found[0]
    assert resolved.profile_id == await lookup(stub, "user_id", "u1")
    assert [(i.type, i.value) for i in resolved.identifiers] == [("user_id", "u1"), ("email", "ada@example.com")]


async def test_a_manual_merge_keeps_the_rules(stub, bus):
    await send(bus, event("m1", user_id="u1"), event("m2", user_id="u2"), event("m3", anonymous_id="a3"))
    u1 = await eventually(lambda: lookup(stub, "user_id", "u1"))
    u2 = await eventually(lambda: lookup(stub, "user_id", "u2"))
    a3 = await eventually(lambda: lookup(stub, "anonymous_id", "a3"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.MergeProfiles(pb.MergeProfilesRequest(profile_ids=[u1, u2], reason="same person?"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "limit user_id=1" in caught.value.details()
    answer = await stub.MergeProfiles(pb.MergeProfilesRequest(profile_ids=[u1, a3], reason="support ticket 12"))
    assert answer.survivor_profile_id == u1 and answer.merges[0].rule == "manual: support ticket 12"
    published = await eventually(lambda: stored(bus, topics.IDENTITY_MERGED))
    assert published[0].merged_profile_ids == [a3]


async def test_rules_change_without_restart_and_updates_are_compare_and_set(stub, bus):
    rules = (await stub.GetRules(pb.GetRulesRequest())).rules
    assert rules.version == 0 and rules.rules[0].type == "user_id" and rules.rules[0].limit == 1
    proposal = identity_pb2.IdentityRules(blocked_patterns=[r"blocked-.*"])
    updated = (await stub.UpdateRules(pb.UpdateRulesRequest(rules=proposal))).rules
    assert updated.version == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateRules(pb.UpdateRulesRequest(rules=proposal))  # still says version 0
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateRules(
            pb.UpdateRulesRequest(rules=identity_pb2.IdentityRules(version=1, blocked_patterns=["("]))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await send(bus, event("m1", user_id="blocked-7", anonymous_id="a1"))
    profile = await eventually(lambda: lookup(stub, "anonymous_id", "a1"))
    assert await lookup(stub, "user_id", "blocked-7") == ""
    explained = await stub.ExplainProfile(pb.ExplainProfileRequest(profile_id=profile))
    assert explained.unlinked[0].identifier.value == "blocked-7" and "blocked value" in explained.unlinked[0].reason


async def test_a_dry_run_reports_merges_and_splits_without_changing_anything(stub, bus):
    await send(
        bus,
        event("m1", anonymous_id="a1", email="shared@example.com"),
        event("m2", anonymous_id="a2", email="shared@example.com"),
        event("m3", anonymous_id="a3", user_id="u3"),
        event("m5", user_id="u5", email="e5@example.com"),
        event("m6", user_id="u6", email="e5@example.com"),
    )

    async def one_profile_for_both():
        # m1 and m2 travel on different partitions: until both are resolved (and merged, if
        # they raced), a2 may still answer with a profile of its own.
        first, second = await lookup(stub, "anonymous_id", "a1"), await lookup(stub, "anonymous_id", "a2")
        return first if first and first == second else None

    shared = await eventually(one_profile_for_both)
    await eventually(lambda: lookup(stub, "user_id", "u3"))
    u5 = await eventually(lambda: lookup(stub, "user_id", "u5"))
    u6 = await eventually(lambda: lookup(stub, "user_id", "u6"))
    blocking = (await stub.GetRules(pb.GetRulesRequest())).rules  # edit the rules in force, as an operator would
    blocking.rules[1].blocked_patterns.append("shared@.*")

    async def every_link_stored():
        # A link that changes no profile is written behind its event (a lookup answers before
        # it is stored): a dry run replays only stored links, so wait for all five.
        answer = await stub.DryRunRules(pb.DryRunRulesRequest(rules=blocking))
        return answer if answer.links_replayed == 5 else None

    answer = await eventually(every_link_stored)
    assert answer.links_replayed == 5 and answer.profiles_now == 4 and answer.profiles_proposed == 5
    assert [list(g.profile_ids) for g in answer.would_split] == [[shared]]
    assert not answer.would_merge
    assert await lookup(stub, "anonymous_id", "a1") == shared, "nothing changed"
    # Two user ids per profile would let the shared e-mail of u5 and u6 merge them.
    loose = (await stub.GetRules(pb.GetRulesRequest())).rules
    loose.rules[0].limit = 2
    answer = await stub.DryRunRules(pb.DryRunRulesRequest(rules=loose))
    assert [sorted(g.profile_ids) for g in answer.would_merge] == [sorted([u5, u6])]
    assert not answer.would_split


async def test_bad_requests_name_the_field(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Lookup(pb.LookupRequest(identifier=identity_pb2.Identifier(type="phone", value="not a number")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "identifier.value: is not a valid phone"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetIdentities(pb.GetIdentitiesRequest(profile_id="nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
