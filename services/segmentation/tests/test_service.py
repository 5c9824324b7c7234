"""The segmentation service in-process on a real nats-server: the API end to end."""

import asyncio
import json
from datetime import datetime, timezone

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mosaic.consent.v1 import privacy_pb2
from mosaic.events.v1 import identity_changed_pb2, privacy_request_pb2, profile_updated_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.server import Service
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from mosaic.testing.plugin import eventually
from mosaic.testing.relay import Link
from segmentation_service.app import build
from segmentation_service.columns import erased_key
from segmentation_service.config import Settings
from segmentation_service.store import open_store


@pytest.fixture
async def service(make_settings):
    settings = Settings(make_settings("segmentation", MOSAIC_GRACE_SECONDS="1"), "", 1.0)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield segmentation_service_pb2_grpc.SegmentationServiceStub(channel)


def create(segment_id: str, definition: str) -> pb.CreateSegmentRequest:
    return pb.CreateSegmentRequest(
        segment=segment_pb2.Segment(segment_id=segment_id, name=segment_id, definition=definition)
    )


def violation(error: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest.FieldViolation:
    request = error_details_pb2.BadRequest()
    rpc_status.from_call(error).details[0].Unpack(request)
    return request.field_violations[0]


async def test_a_bad_definition_is_invalid_argument_naming_the_position_and_the_rule(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(create("bad", 'traits.plan = "pro" and\n  count(event "X" in last 30d) >> 2'))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violation(caught.value)
    assert found.field == "segment.definition"
    assert found.description.startswith("line 2 column 33: unexpected '>'; expected one of")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(create("loop", 'in segment "loop"'))
    assert "cycle (loop -> loop)" in violation(caught.value).description
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Estimate(pb.EstimateRequest(definition='traits.x matches "("'))
    assert violation(caught.value).field == "definition"


async def test_segments_are_created_read_listed_by_page_updated_and_deleted(stub):
    for name in ("a", "b", "c"):
        answer = await stub.CreateSegment(create(name, "traits.plan   =  'x'".replace("'", '"')))
    assert answer.segment.definition == 'traits.plan = "x"' and answer.segment.revision == 1
    assert answer.segment.expression.trait.path == ["plan"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(create("a", "has email"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    got = await stub.GetSegment(pb.GetSegmentRequest(segment_id="b"))
    assert got.segment.name == "b"
    first = await stub.ListSegments(pb.ListSegmentsRequest(page_size=2))
    second = await stub.ListSegments(pb.ListSegmentsRequest(page_size=2, page_token=first.next_page_token))
    # The named RFM segments (rfm_...) are there from the start, after these by id.
    assert [s.segment_id for s in first.segments] == ["a", "b"]
    assert [s.segment_id for s in second.segments] == ["c", "rfm_about_to_sleep"]
    assert second.next_page_token != ""
    await stub.CreateSegment(create("d", 'in segment "a" or has email'))
    updated = await stub.UpdateSegment(
        pb.UpdateSegmentRequest(segment=segment_pb2.Segment(segment_id="a", name="A", definition="is known"))
    )
    assert updated.segment.revision == 2 and updated.segment.definition == "is known"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteSegment(pb.DeleteSegmentRequest(segment_id="a"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stub.DeleteSegment(pb.DeleteSegmentRequest(segment_id="d"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSegment(pb.GetSegmentRequest(segment_id="d"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_profiles_enter_from_profile_updated_and_the_api_reads_them(service, stub):
    await stub.CreateSegment(create("pro", 'traits.plan = "pro" and count(event "Order Completed") >= 1'))
    bus = service.runtime.bus
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    for index in range(5):
        update = profile_updated_pb2.ProfileUpdated(profile_id=f"p{index}", version=1)
        update.changes.add(path="traits.plan", new_value=struct_pb2.Value(string_value="pro" if index < 3 else "free"))
        update.changes.add(
            path=f"daily_counters.{today}|Order Completed", new_value=struct_pb2.Value(number_value=index)
        )
        await bus.publish(topics.PROFILE_UPDATED, update.profile_id, update, f"p{index}:1")

    async def members():
        return sorted([m.profile_id async for m in stub.ListMembers(pb.ListMembersRequest(segment_id="pro"))])

    await eventually(lambda: _equals(members(), ["p1", "p2"]))
    assert (await stub.IsMember(pb.IsMemberRequest(segment_id="pro", profile_id="p1"))).member
    assert (await stub.GetProfileSegments(pb.GetProfileSegmentsRequest(profile_id="p2"))).segment_ids == ["pro"]
    estimate = await stub.Estimate(
        pb.EstimateRequest(definition='traits.plan in ["pro", "free"] and count(event "Order Completed") > 2')
    )
    # "some matching profile ids": in the order the view took them in, which arrival decides
    assert (estimate.count, estimate.population, sorted(estimate.sample)) == (2, 5, ["p3", "p4"])


async def _equals(awaitable, expected) -> bool:
    return await awaitable == expected


async def test_segments_are_managed_from_the_command_line(service, capsys):
    from mosaic.cli.__main__ import main

    address = ["--address", f"127.0.0.1:{service.port}"]
    run = lambda *argv: asyncio.to_thread(main, [*argv, *address])  # noqa: E731
    assert await run("segments", "create", "vip", "traits.ltv>1000 and has email", "--name", "VIP") == 0
    assert json.loads(capsys.readouterr().out)["definition"] == "traits.ltv > 1000 and has email"
    assert await run("segments", "list") == 0
    *named, listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # not a terminal: JSON
    assert len(named) == 11 and all(s["segmentId"].startswith("rfm_") for s in named)
    assert (listed["segmentId"], listed["name"], listed["definition"]) == (
        "vip",
        "VIP",
        "traits.ltv > 1000 and has email",
    )
    assert await run("segments", "estimate", "is known") == 0
    assert json.loads(capsys.readouterr().out)["definition"] == "is known"
    assert await run("segments", "create", "bad", "traits.ltv >") == 1
    assert "INVALID_ARGUMENT: segment.definition: line 1 column" in capsys.readouterr().err
    assert await run("segments", "delete", "vip") == 0
    assert await run("segments", "show", "vip") == 1


async def two_replicas(make_settings, **second_environ: str) -> tuple[Service, Service]:
    """Two replicas, the first asking the second for Estimate, once they hold half the partitions each."""

    def settings(peers: tuple[str, ...], **environ: str) -> Settings:
        return Settings(make_settings("segmentation", MOSAIC_GRACE_SECONDS="1", **environ), "", 1.0, peers)

    second = settings((), **second_environ)
    other = Service(second.platform, lambda runtime: build(runtime, second))
    await other.start()
    first = settings((f"127.0.0.1:{other.port}",))
    service = Service(first.platform, lambda runtime: build(runtime, first))
    await service.start()

    def held() -> list[frozenset[int]]:
        return [s.runtime.ownership.owned for s in (service, other) if s.runtime is not None]

    await eventually(lambda: [len(h) for h in held()] == [4, 4] and set.union(*map(set, held())) == set(range(8)))
    return service, other


async def test_an_estimate_asked_of_one_replica_adds_up_every_replica(make_settings):
    service, other = await two_replicas(make_settings)
    try:
        for index in range(12):
            update = profile_updated_pb2.ProfileUpdated(profile_id=f"p{index}", version=1)
            update.changes.add(path="traits.n", new_value=struct_pb2.Value(number_value=index))
            await service.runtime.bus.publish(topics.PROFILE_UPDATED, update.profile_id, update, f"p{index}:1")
        mine = service.runtime.ownership.owned
        owned = {i for i in range(12) if topics.partition_of(f"p{i}", service.settings.partitions) in mine}
        assert 0 < len(owned) < 12  # both replicas hold some
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)

            async def estimate(**fields):
                return await stub.Estimate(pb.EstimateRequest(definition="traits.n >= 6", sample_size=100, **fields))

            answer = await eventually(lambda: _when((estimate()), lambda a: a.population == 12))
            assert answer.count == 6 and sorted(answer.sample) == sorted(f"p{i}" for i in range(6, 12))
            local = await estimate(local_only=True)
            assert local.population == len(owned) and local.count == len([i for i in owned if i >= 6])
    finally:
        await service.stop()
        await other.stop()


async def _when(awaitable, check):
    answer = await awaitable
    return answer if check(answer) else None


async def test_a_merge_is_heard_by_the_replica_holding_the_merged_profile(make_settings):
    service, other = await two_replicas(make_settings)
    partitions, mine = service.settings.partitions, service.runtime.ownership.owned
    survivor = next(f"s{i}" for i in range(100) if topics.partition_of(f"s{i}", partitions) in mine)
    merged = next(f"m{i}" for i in range(100) if topics.partition_of(f"m{i}", partitions) not in mine)
    try:
        bus = service.runtime.bus
        for profile_id in (survivor, merged):
            update = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=1)
            update.changes.add(path="traits.n", new_value=struct_pb2.Value(number_value=1))
            await bus.publish(topics.PROFILE_UPDATED, profile_id, update, f"{profile_id}:1")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
            estimate = lambda: stub.Estimate(pb.EstimateRequest(definition="traits.n = 1"))  # noqa: E731
            await eventually(lambda: _when(estimate(), lambda a: a.count == 2))
            merge = identity_changed_pb2.IdentityMerged(
                merge_id="m-1", survivor_profile_id=survivor, merged_profile_ids=[merged]
            )
            # Consumed by the first replica (the survivor's partition); the merged row is the other's.
            await bus.publish(topics.IDENTITY_MERGED, survivor, merge, "m-1")
            answer = await eventually(lambda: _when(estimate(), lambda a: a.count == 1))
            assert list(answer.sample) == [survivor]
    finally:
        await service.stop()
        await other.stop()


async def test_a_segments_size_is_counted_per_day(make_settings):
    settings = Settings(make_settings("segmentation", MOSAIC_GRACE_SECONDS="1"), "", 1.0, (), 0.1)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
            await stub.CreateSegment(create("big", "traits.n >= 2"))
            for index in range(4):
                update = profile_updated_pb2.ProfileUpdated(profile_id=f"p{index}", version=1)
                update.changes.add(path="traits.n", new_value=struct_pb2.Value(number_value=index))
                await service.runtime.bus.publish(topics.PROFILE_UPDATED, update.profile_id, update, f"p{index}:1")
            today = datetime.now(timezone.utc).strftime("%Y-%m-%d")

            async def sizes():
                answer = await stub.GetSegmentSizes(pb.GetSegmentSizesRequest(segment_id="big"))
                return [(s.day, s.count) for s in answer.sizes]

            await eventually(lambda: _when(sizes(), lambda found: found == [(today, 2)]))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetSegmentSizes(pb.GetSegmentSizesRequest(segment_id="big", days=401))
            assert violation(caught.value).field == "days"
    finally:
        await service.stop()


async def test_an_erasure_takes_the_person_out_of_every_replicas_view(make_settings):
    service, other = await two_replicas(make_settings)
    partitions, mine = service.settings.partitions, service.runtime.ownership.owned
    # The request is consumed on the person's partition, held by the first replica; a profile
    # merged into the person lives on the other's partition, in the other's view.
    person = next(f"a{i}" for i in range(100) if topics.partition_of(f"a{i}", partitions) in mine)
    elsewhere = next(f"b{i}" for i in range(100) if topics.partition_of(f"b{i}", partitions) not in mine)
    same = topics.partition_of(elsewhere, partitions)
    kept = next(f"c{i}" for i in range(200) if topics.partition_of(f"c{i}", partitions) == same)
    try:
        bus = service.runtime.bus
        for profile_id in (person, elsewhere, kept):
            update = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=1)
            update.changes.add(path="traits.n", new_value=struct_pb2.Value(number_value=1))
            await bus.publish(topics.PROFILE_UPDATED, profile_id, update, f"{profile_id}:1")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
            estimate = lambda: stub.Estimate(pb.EstimateRequest(definition="traits.n = 1", sample_size=100))  # noqa: E731
            await eventually(lambda: _when(estimate(), lambda a: a.count == 3))
            request = privacy_request_pb2.PrivacyRequested(
                request_id="r-1",
                kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE,
                person_id=person,
                profile_ids=[person, elsewhere],
            )
            await bus.publish(topics.PRIVACY_REQUESTED, person, request, "r-1")
            answer = await eventually(lambda: _when(estimate(), lambda a: a.count == 1))
            assert list(answer.sample) == [kept] and answer.population == 1
            # An update of an erased profile still on its way (consumed after the erasure) does
            # not bring it back.
            late = profile_updated_pb2.ProfileUpdated(profile_id=elsewhere, version=2)
            late.changes.add(path="traits.n", new_value=struct_pb2.Value(number_value=1))
            await bus.publish(topics.PROFILE_UPDATED, elsewhere, late, f"{elsewhere}:2")
            marker = profile_updated_pb2.ProfileUpdated(profile_id=kept, version=2)
            marker.changes.add(path="traits.n", new_value=struct_pb2.Value(number_value=2))
            await bus.publish(topics.PROFILE_UPDATED, kept, marker, f"{kept}:2")  # same partition, after it
            answer = await eventually(lambda: _when(estimate(), lambda a: a.count == 0))
            assert answer.population == 1
    finally:
        await service.stop()
        await other.stop()


@pytest.mark.parametrize("completed", [False, True], ids=["in-flight", "completed"])
async def test_a_replica_disconnected_when_an_erasure_went_out_drops_the_person_once_back(
    make_settings, nats_server, completed
):
    """The second replica's connection is down while a profile of its view is erased (the first
    replica consumes the request): once back it drops the row, whether the request is still in
    privacy.requested or complete and gone from the stream (here: purged)."""
    link = Link(nats_server.url)
    service, other = await two_replicas(make_settings, MOSAIC_NATS_URL=await link.start())
    partitions, mine = service.settings.partitions, service.runtime.ownership.owned
    person = next(f"a{i}" for i in range(100) if topics.partition_of(f"a{i}", partitions) in mine)
    elsewhere = next(f"b{i}" for i in range(100) if topics.partition_of(f"b{i}", partitions) not in mine)
    try:
        bus = service.runtime.bus
        for profile_id in (person, elsewhere):
            update = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=1)
            update.changes.add(path="traits.n", new_value=struct_pb2.Value(number_value=1))
            await bus.publish(topics.PROFILE_UPDATED, profile_id, update, f"{profile_id}:1")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
            estimate = lambda: stub.Estimate(pb.EstimateRequest(definition="traits.n = 1", sample_size=100))  # noqa: E731
            await eventually(lambda: _when(estimate(), lambda a: a.count == 2))
            link.cut()
            await eventually(lambda: not other.runtime.bus.connected)
            request = privacy_request_pb2.PrivacyRequested(
                request_id="r-1",
                kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE,
                person_id=person,
                profile_ids=[person, elsewhere],
            )
            await bus.publish(topics.PRIVACY_REQUESTED, person, request, "r-1")
            store = await open_store(service.settings)
            try:
                partition = topics.partition_of(elsewhere, partitions)
                await eventually(lambda: _when(store.erased(partition, 0.0), lambda k: erased_key(elsewhere) in k))
            finally:
                await store.close()
            if completed:
                await bus.jetstream.purge_stream(topics.PRIVACY_REQUESTED.stream)
            # The first replica dropped the person at once; the second's view still counts the
            # profile it holds (Estimate asks it over gRPC, which the cut leaves alone).
            answer = await eventually(lambda: _when(estimate(), lambda a: a.count == 1))
            assert list(answer.sample) == [elsewhere]
            link.restore()
            await eventually(lambda: other.runtime.bus.connected)
            answer = await eventually(lambda: _when(estimate(), lambda a: a.count == 0))
            assert list(answer.sample) == []
    finally:
        await service.stop()
        await other.stop()
        await link.close()


async def test_an_erased_profile_stays_out_of_the_view_after_a_restart(make_settings):
    settings = Settings(make_settings("segmentation", MOSAIC_GRACE_SECONDS="1"), "", 1.0)
    partitions = settings.platform.partitions
    erased = "e1"
    kept = next(
        f"k{i}"
        for i in range(200)
        if topics.partition_of(f"k{i}", partitions) == topics.partition_of(erased, partitions)
    )

    def update(profile_id: str, version: int) -> profile_updated_pb2.ProfileUpdated:
        found = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=version)
        found.changes.add(path="traits.n", new_value=struct_pb2.Value(number_value=version))
        return found

    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    try:
        bus = service.runtime.bus
        await bus.publish(topics.PROFILE_UPDATED, erased, update(erased, 1), f"{erased}:1")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
            estimate = lambda: stub.Estimate(pb.EstimateRequest(definition="traits.n >= 1"))  # noqa: E731
            await eventually(lambda: _when(estimate(), lambda a: a.count == 1))
            request = privacy_request_pb2.PrivacyRequested(
                request_id="r-1", kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, person_id=erased
            )
            await bus.publish(topics.PRIVACY_REQUESTED, erased, request, "r-1")
            await eventually(lambda: _when(estimate(), lambda a: a.population == 0))
        store = await open_store(settings.platform)
        try:
            partition = topics.partition_of(erased, partitions)
            await eventually(lambda: _when(store.erased(partition, 0.0), lambda keys: erased_key(erased) in keys))
            assert erased not in str(await store.erased(partition, 0.0))  # a digest, not the id
        finally:
            await store.close()
    finally:
        await service.stop()
    # A late update of the erased profile arrives while the replica is down, then another
    # profile's on the same partition.
    bus = await Bus.connect(settings.platform.nats_url, "segmentation-test", partitions)
    try:
        await bus.publish(topics.PROFILE_UPDATED, erased, update(erased, 2), f"{erased}:2")
        await bus.publish(topics.PROFILE_UPDATED, kept, update(kept, 1), f"{kept}:1")
    finally:
        await bus.close()

    # The view starts empty (no profile service here): the erased list, read back when the
    # replica takes the partition, keeps the late update out.
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
            estimate = lambda: stub.Estimate(pb.EstimateRequest(definition="traits.n >= 1", sample_size=100))  # noqa: E731
            answer = await eventually(lambda: _when(estimate(), lambda a: kept in a.sample))
            assert list(answer.sample) == [kept] and answer.population == 1
    finally:
        await service.stop()


async def test_a_definition_on_an_event_property_needs_the_profile_service_and_says_so(stub):
    # This service runs without MOSAIC_PROFILE_ADDRESS: nobody would keep the series.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(create("eur", 'sum(event "Order Completed".revenue where currency = "EUR") > 100'))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "MOSAIC_PROFILE_ADDRESS" in caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSegment(pb.GetSegmentRequest(segment_id="eur"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # nothing stored
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(create("eur", 'avg(event "Order Completed" where currency > true) > 1'))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation(caught.value).field == "segment.definition.event.property"
