"""The profile service in-process: errors with details, health through a graceful stop."""

import asyncio
import time
from datetime import date, timedelta

import grpc
import pytest
from google.protobuf import json_format, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from mosaic.archive.v1 import event_archive_service_pb2 as archive_pb
from mosaic.archive.v1 import event_archive_service_pb2_grpc
from mosaic.events.v1 import event_pb2, profile_updated_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.server import Service
from mosaic.profile.v1 import profile_pb2, profile_service_pb2_grpc
from mosaic.profile.v1 import profile_service_pb2 as pb
from mosaic.testing.plugin import eventually
from profile_service import computed
from profile_service.app import build
from profile_service.config import Settings
from profile_service.fold import day_of


@pytest.fixture
async def service(make_settings):
    settings = Settings(make_settings("profile", MOSAIC_GRACE_SECONDS="1"), (), 90, 90, 20, 1000)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


async def test_an_unknown_profile_is_not_found_with_the_resource_named(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetProfile(pb.GetProfileRequest(profile_id="nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ResourceInfo()
    rpc_status.from_call(caught.value).details[0].Unpack(info)
    assert (info.resource_type, info.resource_name) == ("profile", "nobody")


async def test_a_bad_page_token_names_the_field(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListSnapshots(pb.ListSnapshotsRequest(profile_id="p", page_token="forged"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "page_token: is not a token this service issued"


async def test_health_is_serving_then_not_serving_during_a_graceful_stop(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "mosaic.profile.v1.ProfileService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(service.stop())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


async def send(service, message_id: str, event_type=event_pb2.EVENT_TYPE_IDENTIFY, name="", **fields):
    event = event_pb2.Event(type=event_type, event=name, user_id="ada", message_id=message_id)
    event.timestamp.GetCurrentTime()
    if event_type == event_pb2.EVENT_TYPE_IDENTIFY:
        event.traits.update(fields)
    else:
        event.properties.update(fields)
    resolved = resolved_pb2.ResolvedEvent(
        profile_id="p-ada", event=event, identifiers=[identity_pb2.Identifier(type="user_id", value="ada")]
    )
    await service.runtime.bus.publish(topics.EVENTS_RESOLVED, "p-ada", resolved, message_id)


async def test_history_upserts_computed_traits_and_the_archive_over_grpc(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        archive = event_archive_service_pb2_grpc.EventArchiveServiceStub(channel)
        await send(service, "m1", plan="free")
        await send(service, "m2", event_pb2.EVENT_TYPE_TRACK, "Order Completed", revenue=30, category="games")

        async def version(v):
            try:
                answer = await stub.GetProfile(
                    pb.GetProfileRequest(identifier=identity_pb2.Identifier(type="user_id", value="ada"))
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND  # not applied yet
                return False
            return answer.profile.version >= v and answer.profile

        profile = await eventually(lambda: version(2))
        assert profile.computed_traits["orders"].number_value == 1
        assert profile.computed_traits["lifetime_value"].number_value == 30
        between = profile.last_seen

        upserted = await stub.UpsertTraits(
            pb.UpsertTraitsRequest(profile_id="p-ada", source_id="crm", request_id="r1", traits={"plan": "enterprise"})
        )
        assert upserted.profile.traits["plan"].value.string_value == "enterprise"
        again = await stub.UpsertTraits(
            pb.UpsertTraitsRequest(profile_id="p-ada", source_id="crm", request_id="r1", traits={"plan": "enterprise"})
        )
        assert again.profile.version == upserted.profile.version == 3, "the same request id is applied once"

        snapshots = await stub.ListSnapshots(pb.ListSnapshotsRequest(profile_id="p-ada", page_size=2))
        assert [s.version for s in snapshots.snapshots] == [3, 2] and snapshots.next_page_token == "2"
        rest = await stub.ListSnapshots(
            pb.ListSnapshotsRequest(profile_id="p-ada", page_token=snapshots.next_page_token)
        )
        assert [s.version for s in rest.snapshots] == [1]

        diff = await stub.DiffSnapshots(pb.DiffSnapshotsRequest(profile_id="p-ada", from_version=1, to_version=3))
        plan = next(c for c in diff.changes if c.path == "traits.plan")
        assert (plan.old_value.string_value, plan.new_value.string_value) == ("free", "enterprise")

        first = (await stub.ListSnapshots(pb.ListSnapshotsRequest(profile_id="p-ada"))).snapshots[-1]
        at = await stub.GetProfileAt(pb.GetProfileAtRequest(profile_id="p-ada", at=first.recorded_at))
        assert at.profile.version == 1 and at.profile.traits["plan"].value.string_value == "free"

        created = await stub.CreateComputedTrait(
            pb.CreateComputedTraitRequest(
                definition=profile_pb2.ComputedTraitDefinition(
                    name="games_spend",
                    aggregation=profile_pb2.AGGREGATION_SUM,
                    event="Order Completed",
                    property="revenue",
                    filters=[profile_pb2.PropertyFilter(property="category", equals={"string_value": "games"})],
                )
            )
        )
        assert created.definition.HasField("created_at")

        async def backfilled():
            answer = await stub.GetProfile(pb.GetProfileRequest(profile_id="p-ada"))
            return answer.profile.computed_traits.get("games_spend")

        assert (await eventually(backfilled)).number_value == 30, "backfilled from the archive"

        events = await archive.ListEvents(archive_pb.ListEventsRequest(profile_id="p-ada", event="Order Completed"))
        assert [e.message_id for e in events.events] == ["m2"]
        every = await archive.ListEvents(archive_pb.ListEventsRequest(profile_id="p-ada", page_size=2))
        assert len(every.events) == 2 and every.next_page_token
        assert between.seconds > 0

        batch = await stub.BatchGetProfiles(pb.BatchGetProfilesRequest(profile_ids=["p-ada", "nobody"]))
        assert [p.profile_id for p in batch.profiles] == ["p-ada"]
        scanned = [r.profile.profile_id async for r in stub.ScanProfiles(pb.ScanProfilesRequest())]
        assert scanned == ["p-ada"]


async def test_a_scan_comes_in_pages_and_keeps_to_the_partitions_asked_for(service):
    people = [f"p-{i}" for i in range(7)]
    for i, profile_id in enumerate(people):
        event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id=profile_id, message_id=f"s{i}")
        event.timestamp.GetCurrentTime()
        event.traits.update({"n": i})
        resolved = resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event)
        await service.runtime.bus.publish(topics.EVENTS_RESOLVED, profile_id, resolved, f"s{i}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)

        async def scan(**request) -> list[list[str]]:
            return [
                [p.profile_id for p in r.profiles] or [r.profile.profile_id]
                async for r in stub.ScanProfiles(pb.ScanProfilesRequest(**request))
            ]

        async def all_there():
            return len(await scan()) == len(people)

        await eventually(all_there)
        pages = await scan(page_size=3)
        assert [len(page) for page in pages] == [3, 3, 1]
        assert sorted(sum(pages, [])) == sorted(people)
        count = 4
        by_partition = {
            p: sorted(sum(await scan(page_size=100, partition_count=count, partitions=[p]), [])) for p in range(count)
        }
        for partition, ids in by_partition.items():
            assert ids == sorted(i for i in people if topics.partition_of(i, count) == partition)
        assert sorted(sum(await scan(page_size=2, partition_count=count, partitions=[0, 1, 2, 3]), [])) == sorted(
            people
        )

        for request, field in (
            ({"page_size": 1001}, "page_size"),
            ({"page_size": -1}, "page_size"),
            ({"partitions": [0]}, "partition_count"),
            ({"partition_count": 4}, "partitions"),
            ({"partition_count": 4, "partitions": [1, 4]}, "partitions[1]"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await scan(**request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = rpc_status.from_call(caught.value).details[0]
            bad = error_details_pb2.BadRequest()
            details.Unpack(bad)
            assert bad.field_violations[0].field == field, request


async def test_a_page_can_carry_its_daily_counters_as_columns(service):
    """The columns hold exactly the counters the profiles carry without them, and are asked of pages only."""
    for i in range(5):
        profile_id = f"p-{i}"
        for j in range(i + 1):
            event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, event=["Order Completed", "Viewed"][j % 2])
            event.message_id = f"c{i}-{j}"
            event.timestamp.FromSeconds(int(time.time()) - 86400 * (j // 2))
            event.properties.update({"revenue": 10.0 + j})
            resolved = resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event)
            await service.runtime.bus.publish(topics.EVENTS_RESOLVED, profile_id, resolved, event.message_id)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)

        async def counters(columns: bool) -> dict[str, set[tuple]]:
            found: dict[str, set[tuple]] = {}
            request = pb.ScanProfilesRequest(page_size=2, daily_counters_as_columns=columns)
            async for answer in stub.ScanProfiles(request):
                for profile in answer.profiles:
                    found[profile.profile_id] = {
                        (c.day, c.event, c.count, c.revenue) for c in profile.daily_counters.values()
                    }
                table = answer.daily_counters
                for n, index in enumerate(table.profile_indexes):
                    day = (date(1970, 1, 1) + timedelta(days=table.days[n])).isoformat()
                    event = table.events[table.event_indexes[n]]
                    found[answer.profiles[index].profile_id].add((day, event, table.counts[n], table.revenues[n]))
            return found

        async def all_counted():
            return sum(len(c) for c in (await counters(False)).values()) == 1 + 2 + 3 + 4 + 5

        await eventually(all_counted)
        plain = await counters(False)
        assert sorted(c[3] for c in plain["p-4"]) == [10.0, 11.0, 12.0, 13.0, 14.0]  # one event a counter
        assert await counters(True) == plain
        async for answer in stub.ScanProfiles(pb.ScanProfilesRequest(page_size=2, daily_counters_as_columns=True)):
            assert all(not p.daily_counters for p in answer.profiles)  # moved, not copied
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.ScanProfiles(pb.ScanProfilesRequest(daily_counters_as_columns=True)):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = error_details_pb2.BadRequest()
        rpc_status.from_call(caught.value).details[0].Unpack(bad)
        assert bad.field_violations[0].field == "daily_counters_as_columns"


async def test_upsert_for_an_unknown_profile_is_not_found_and_bad_input_names_the_field(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UpsertTraits(
                pb.UpsertTraitsRequest(profile_id="nobody", source_id="crm", request_id="r", traits={"a": 1})
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UpsertTraits(pb.UpsertTraitsRequest(profile_id="p", source_id="crm", traits={"a": 1}))
        assert caught.value.details() == "request_id: is required"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DiffSnapshots(pb.DiffSnapshotsRequest(profile_id="p", from_version=3, to_version=2))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def order(service, message_id: str, when, **properties) -> None:
    event = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_TRACK, event="Order Completed", user_id="ada", message_id=message_id, timestamp=when
    )
    event.properties.update(properties)
    resolved = resolved_pb2.ResolvedEvent(
        profile_id="p-ada", event=event, identifiers=[identity_pb2.Identifier(type="user_id", value="ada")]
    )
    await service.runtime.bus.publish(topics.EVENTS_RESOLVED, "p-ada", resolved, message_id)


def field_of(error: grpc.aio.AioRpcError) -> str:
    bad = error_details_pb2.BadRequest()
    rpc_status.from_call(error).details[0].Unpack(bad)
    return bad.field_violations[0].field


EUR = profile_pb2.PropertyFilter(property="currency", equals={"string_value": "EUR"})


async def test_an_event_series_is_backfilled_from_the_archive_then_kept_and_announced_a_day_at_a_time(service):
    updates: list[profile_updated_pb2.ProfileUpdated] = []

    async def on_message(msg) -> None:
        updates.append(profile_updated_pb2.ProfileUpdated.FromString(msg.data))

    await service.runtime.bus._nc.subscribe(topics.PROFILE_UPDATED.wildcard, cb=on_message)
    when = timestamp_pb2.Timestamp()
    when.GetCurrentTime()
    key = f"{day_of(when)}|eur_revenue"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        await order(service, "o1", when, revenue=30, currency="EUR")
        await order(service, "o2", when, revenue=50, currency="USD")
        await order(service, "o3", when, revenue=12, currency="EUR")
        await order(service, "o4", when, revenue="n/a", currency="EUR")  # not a number: not in the sums

        async def profile(wanted):
            try:
                found = (await stub.GetProfile(pb.GetProfileRequest(profile_id="p-ada"))).profile
            except grpc.aio.AioRpcError:
                return None
            return found if wanted(found) else None

        await eventually(lambda: profile(lambda p: p.version == 4))
        defined = await stub.DefineEventSeries(
            pb.DefineEventSeriesRequest(name="eur_revenue", event="Order Completed", property="revenue", filters=[EUR])
        )
        assert defined.definition.aggregation == profile_pb2.AGGREGATION_DAILY and defined.definition.window_days == 0
        assert defined.created  # its backfill has only begun
        backfilled = await eventually(lambda: profile(lambda p: key in p.daily_series))
        entry = backfilled.daily_series[key]
        assert (entry.day, entry.series, entry.count, entry.sum, entry.min, entry.max) == (
            day_of(when),
            "eur_revenue",
            2,
            42,
            12,
            30,
        ), "from the archive"
        assert not backfilled.computed_traits.get("eur_revenue")

        await order(service, "o5", when, revenue=8, currency="EUR")
        updated = await eventually(lambda: profile(lambda p: p.daily_series[key].count == 3))
        assert (updated.daily_series[key].sum, updated.daily_series[key].min) == (50, 8)

        async def announced():
            return next(
                (
                    c
                    for u in updates
                    for c in u.changes
                    if u.cause_message_id == "o5" and c.path == f"daily_series.{key}"
                ),
                None,
            )

        change = await eventually(announced)
        assert json_format.MessageToDict(change.old_value) == {"count": 2, "sum": 42, "min": 12, "max": 30}
        assert json_format.MessageToDict(change.new_value) == {"count": 3, "sum": 50, "min": 8, "max": 30}

        # Defined again with the same shape (equals spelled out): the stored one, nothing new.
        spelled = profile_pb2.PropertyFilter()
        spelled.CopyFrom(EUR)
        spelled.operator = profile_pb2.FILTER_OPERATOR_EQUALS
        again = await stub.DefineEventSeries(
            pb.DefineEventSeriesRequest(
                name="eur_revenue", event="Order Completed", property="revenue", filters=[spelled]
            )
        )
        assert again.definition == defined.definition and not again.created
        listed = await stub.ListComputedTraits(pb.ListComputedTraitsRequest())
        assert [d.name for d in listed.definitions].count("eur_revenue") == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DefineEventSeries(
                pb.DefineEventSeriesRequest(
                    name="eur_revenue", event="Order Completed", property="total", filters=[EUR]
                )
            )
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "another property" in caught.value.details()

        # Deleted, its entries go with the profile's next change.
        await stub.DeleteComputedTrait(pb.DeleteComputedTraitRequest(name="eur_revenue"))
        await order(service, "o6", when, revenue=1, currency="EUR")
        gone = await eventually(lambda: profile(lambda p: p.version >= 7))
        assert key not in gone.daily_series and gone.daily_counters


async def test_bad_event_series_name_the_field_and_create_computed_trait_refuses_a_series(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        for request, field in (
            (pb.DefineEventSeriesRequest(name="Bad Name", event="x"), "name"),
            (pb.DefineEventSeriesRequest(name="orders", event="x"), "name"),  # a built-in trait's
            (pb.DefineEventSeriesRequest(name="s"), "event"),
            (
                pb.DefineEventSeriesRequest(name="s", event="x", filters=[{"equals": {"number_value": 1}}]),
                "filters[0].property",
            ),
            (
                pb.DefineEventSeriesRequest(
                    name="s",
                    event="x",
                    filters=[
                        EUR,
                        {
                            "property": "gift",
                            "equals": {"bool_value": True},
                            "operator": profile_pb2.FILTER_OPERATOR_GREATER_THAN,
                        },
                    ],
                ),
                "filters[1].equals",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.DefineEventSeries(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_of(caught.value) == field, request
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateComputedTrait(
                pb.CreateComputedTraitRequest(
                    definition=profile_pb2.ComputedTraitDefinition(
                        name="s", aggregation=profile_pb2.AGGREGATION_DAILY, event="x"
                    )
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "definition.aggregation: is defined with DefineEventSeries"
        listed = await stub.ListComputedTraits(pb.ListComputedTraitsRequest())
        assert {d.name for d in listed.definitions} == {d.name for d in computed.BUILT_IN}, "none stored"
