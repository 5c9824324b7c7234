"""RFM in the running service on a real nats-server: recomputed edges move people between the
named segments, each transition published once, and a restart keeps the edges."""

import socket
from datetime import datetime, timezone

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mosaic.events.v1 import profile_updated_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.errors import Unavailable
from mosaic.platform.ownership import FixedPartitions
from mosaic.platform.server import Service
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from mosaic.testing.plugin import eventually
from segmentation_service import language, rfm
from segmentation_service.app import build
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.config import Settings
from segmentation_service.membership import Memberships
from segmentation_service.rfm import RfmModel, RfmTraits
from segmentation_service.scoring import RfmScoring
from segmentation_service.server import SegmentationServicer
from segmentation_service.state import DAY, ProfileState
from segmentation_service.store import open_store

NAMED = {segment_id: language.parse(text) for segment_id, _, text in rfm.NAMED}
ENTERED = segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED


def _named(expression, found) -> bool:
    kind = expression.WhichOneof("kind")
    if kind == "and":
        return all(_named(o, found) for o in getattr(expression, "and").operands)
    return rfm.matches(expression.rfm, found)


def customer(pid: str, version: int, days_ago: float, orders: float, value: float, now: float):
    """A profile.updated carrying a customer's commerce traits, and the state it makes."""
    last = datetime.fromtimestamp(now - days_ago * DAY, timezone.utc).isoformat().replace("+00:00", "Z")
    update = profile_updated_pb2.ProfileUpdated(profile_id=pid, version=version)
    traits: dict[str, str | float] = {"last_order_at": last, "orders": orders, "lifetime_value": value}
    for name, wanted in traits.items():
        change = update.changes.add(path=f"computed_traits.{name}")
        if isinstance(wanted, str):
            change.new_value.string_value = wanted
        else:
            change.new_value.number_value = wanted
    return update, ProfileState(pid, version, computed=traits)


async def start(
    make_settings, interval: float, port: int = 0, peers: tuple[str, ...] = ()
) -> tuple[Service, grpc.aio.Channel]:
    platform = make_settings("segmentation", MOSAIC_GRACE_SECONDS="1", MOSAIC_GRPC_PORT=str(port))
    settings = Settings(platform, "", 1.0, peers, rfm_interval=interval)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    return service, grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")


async def messages(service: Service) -> list[segment_membership_pb2.SegmentMembershipChanged]:
    assert service.runtime is not None  # started
    js = service.runtime.bus._js
    info = await js.stream_info(topics.SEGMENT_MEMBERSHIP.stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        data = (await js.get_msg(topics.SEGMENT_MEMBERSHIP.stream, seq)).data
        assert data is not None
        found.append(segment_membership_pb2.SegmentMembershipChanged.FromString(data))
    return found


async def memberships(stub, profile_ids) -> dict[str, set[str]]:
    found = {}
    for pid in profile_ids:
        answer = await stub.GetProfileSegments(pb.GetProfileSegmentsRequest(profile_id=pid))
        found[pid] = {s for s in answer.segment_ids if s.startswith("rfm_")}
    return found


def expected(states: dict[str, ProfileState], model: RfmModel, now: float) -> dict[str, set[str]]:
    return {
        pid: {s for s, e in NAMED.items() if (found := rfm.scores(state, model, now)) and _named(e, found)}
        for pid, state in states.items()
    }


async def test_a_recompute_moves_a_customer_between_named_segments_once_and_a_restart_keeps_the_edges(make_settings):
    now = datetime.now(timezone.utc).timestamp()
    service, channel = await start(make_settings, interval=0.3)
    states: dict[str, ProfileState] = {}
    try:
        stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
        assert len([s async for s in _segments(stub)]) == 11  # ready-made from the first start

        async def publish(pid, version, days_ago, orders, value):
            update, states[pid] = customer(pid, version, days_ago, orders, value, now)
            await service.runtime.bus.publish(topics.PROFILE_UPDATED, pid, update, f"{pid}:{version}")

        async def settled(count: int):
            model = (await stub.GetRfmModel(pb.GetRfmModelRequest())).model
            if model.customers != count:
                return None
            current = RfmModel.of_proto(model, RfmTraits())
            return model if await memberships(stub, states) == expected(states, current, now) else None

        # Ten customers from the best (c0: today, 10 orders, 1000) to the least (c9).
        for i in range(10):
            await publish(f"c{i}", 1, i * 3 + 0.5, 10.0 - i, (10.0 - i) * 100)
        first = await eventually(lambda: settled(10))
        assert tuple(first.frequency_edges) == (2, 4, 6, 8)
        assert (await memberships(stub, ["c0", "c9"])) == {"c0": {"rfm_champions"}, "c9": {"rfm_lost"}}

        # Ten bigger spenders arrive: c0's own profile does not change, the edges do, and c0 is
        # no champion any more.
        for i in range(10):
            await publish(f"w{i}", 1, 0.5, 100.0, 10_000.0)
        second = await eventually(lambda: settled(20))
        assert second.generation > first.generation
        assert (await memberships(stub, ["c0"])) == {"c0": {"rfm_potential_loyalists"}}

        found = await messages(service)
        for pid in states:
            for segment_id in NAMED:
                changes = [m.change for m in found if (m.profile_id, m.segment_id) == (pid, segment_id)]
                # Entries and exits alternate, from an entry: none published twice.
                assert changes[:1] in ([], [ENTERED]), (pid, segment_id, changes)
                assert all(a != b for a, b in zip(changes, changes[1:], strict=False)), (pid, segment_id, changes)
                assert (len(changes) % 2 == 1) == (segment_id in (await memberships(stub, [pid]))[pid])
        # Estimate reads the same scores.
        current = RfmModel.of_proto(second, RfmTraits())
        estimate = await stub.Estimate(pb.EstimateRequest(definition="rfm.fm >= 3 and rfm.recency = 5"))
        scored = [rfm.scores(state, current, now) for state in states.values()]
        assert estimate.count == sum(1 for f in scored if f and f[4] >= 3 and f[1] == 5) > 0
        mine = [(m.segment_id, m.change) for m in found if m.profile_id == "c0"]
        assert ("rfm_champions", ENTERED) in mine and ("rfm_potential_loyalists", ENTERED) in mine
        published = len(found)
    finally:
        await channel.close()
        await service.stop()

    # A restart (here without the profile service, so the view starts empty) keeps the edges:
    # nothing is recomputed before its time, nobody moves, and a new customer is scored by them.
    service, channel = await start(make_settings, interval=3600)
    try:
        stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
        kept = (await stub.GetRfmModel(pb.GetRfmModelRequest())).model
        assert kept.computed_at.ToNanoseconds() >= second.computed_at.ToNanoseconds()  # recomputed until the stop
        kept.ClearField("computed_at")
        second.ClearField("computed_at")
        assert kept == second
        update, states["z"] = customer("z", 1, 0.2, 1000.0, 1e6, now)
        await service.runtime.bus.publish(topics.PROFILE_UPDATED, "z", update, "z:1")
        await eventually(lambda: _is_member(stub, "rfm_champions", "z"))
        after = await messages(service)
        assert [(m.segment_id, m.profile_id, m.change) for m in after[published:]] == [("rfm_champions", "z", ENTERED)]
        assert len(await _segments_list(stub)) == 11  # not created again
    finally:
        await channel.close()
        await service.stop()


async def test_a_deployment_without_customers_yet_scores_its_first_ones_before_the_interval(make_settings):
    now = datetime.now(timezone.utc).timestamp()
    service, channel = await start(make_settings, interval=3600)
    try:
        stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)

        async def model():
            return (await stub.GetRfmModel(pb.GetRfmModelRequest())).model

        empty = await eventually(lambda: _computed(model()))  # the first round, over nobody
        assert empty.customers == 0 and not empty.recency_edges
        for i in range(5):
            update, _ = customer(f"c{i}", 1, i + 0.5, 1.0 + i, 50.0 * (i + 1), now)
            await service.runtime.bus.publish(topics.PROFILE_UPDATED, f"c{i}", update, f"c{i}:1")
        scored = await eventually(lambda: _with_customers(model(), 5), timeout=30)
        assert len(scored.recency_edges) == 4 and scored.generation == empty.generation + 1
    finally:
        await channel.close()
        await service.stop()


async def _computed(pending):
    model = await pending
    return model if model.computed_at.seconds else None


async def _with_customers(pending, count: int):
    model = await pending
    return model if model.customers == count else None


async def _segments(stub):
    for segment in (await stub.ListSegments(pb.ListSegmentsRequest(page_size=100))).segments:
        yield segment


async def _segments_list(stub):
    return [s async for s in _segments(stub)]


async def _is_member(stub, segment_id: str, profile_id: str) -> bool:
    return (await stub.IsMember(pb.IsMemberRequest(segment_id=segment_id, profile_id=profile_id))).member


async def test_a_bad_rfm_condition_is_invalid_argument_naming_the_position_and_the_rule(make_settings):
    def violation(error):
        request = error_details_pb2.BadRequest()
        rpc_status.from_call(error).details[0].Unpack(request)
        return request.field_violations[0]

    service, channel = await start(make_settings, interval=3600)
    try:
        stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
        segment = segment_pb2.Segment(segment_id="bad", name="bad", definition="has email and rfm.recency > 0")
        for call, field, rule in (
            (stub.CreateSegment(pb.CreateSegmentRequest(segment=segment)), "segment.definition", "line 1 column 29"),
            (stub.Estimate(pb.EstimateRequest(definition="rfm.value >= 1")), "definition", "line 1 column 5"),
            (
                stub.Estimate(
                    pb.EstimateRequest(
                        expression=segment_pb2.Expression(
                            rfm=segment_pb2.RfmPredicate(score=1, operator=segment_pb2.OPERATOR_EQUALS, values=[6])
                        )
                    )
                ),
                "expression.rfm.values[0]",
                "1 to 5",
            ),
            (stub.SummarizeRfm(pb.SummarizeRfmRequest()), "at", "required"),
        ):
            try:
                await call
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert violation(error).field == field and rule in violation(error).description
            else:
                raise AssertionError(f"{field} accepted")
    finally:
        await channel.close()
        await service.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_the_edges_are_those_of_every_replicas_customers(make_settings):
    # Each replica names the other: whichever holds partition 0 recomputes with both views.
    ports = [_free_port(), _free_port()]
    now = datetime.now(timezone.utc).timestamp()
    started = [await start(make_settings, 0.3, ports[i], (f"127.0.0.1:{ports[1 - i]}",)) for i in range(2)]
    try:
        services = [service for service, _ in started]

        def held() -> list[frozenset[int]]:
            return [s.runtime.ownership.owned for s in services if s.runtime is not None]

        await eventually(lambda: [len(h) for h in held()] == [4, 4])
        states = {}
        for i in range(40):
            update, states[f"c{i}"] = customer(f"c{i}", 1, i, 1.0 + i % 7, 10.0 * i, now)
            await services[0].runtime.bus.publish(topics.PROFILE_UPDATED, f"c{i}", update, f"c{i}:1")
        partitions = services[0].settings.partitions
        owners = {topics.partition_of(pid, partitions) in held()[0] for pid in states}
        assert owners == {True, False}  # both replicas hold some customers
        stub = segmentation_service_pb2_grpc.SegmentationServiceStub(started[0][1])

        async def model():
            found = (await stub.GetRfmModel(pb.GetRfmModelRequest())).model
            return found if found.customers == 40 else None

        found = await eventually(model)
        days = sorted(rfm.measures(state, RfmTraits(), now)[0] for state in states.values())
        assert tuple(found.recency_edges) == tuple(float(days[q * 8 - 1]) for q in (1, 2, 3, 4))
    finally:
        for service, channel in started:
            await channel.close()
            await service.stop()


async def test_no_recompute_merges_the_summary_of_a_view_still_rebuilding(make_settings):
    # A replica whose view is still loading partitions it took neither summarises for a peer
    # (UNAVAILABLE) nor recomputes from its own partial view; the recompute stores nothing and is
    # still due, so the next check asks again, and gets every customer once the view is in.
    settings = make_settings("segmentation")
    store = await open_store(settings)
    try:
        # Whole seconds: `at` goes over the wire as a Timestamp, and a fraction rounded on the way
        # puts a customer ordered exactly i days ago a hair under i days (one day less).
        now = float(int(datetime.now(timezone.utc).timestamp()))
        view = ColumnarView(settings.partitions)
        for i in range(10):
            view.put(customer(f"c{i}", 1, i, 1.0 + i, 10.0 * i, now)[1], now)
        catalog = SegmentCatalog(store)
        scoring = RfmScoring(store, catalog, view, FixedPartitions(range(settings.partitions)), clock=lambda: now)
        await scoring.ready()
        servicer = SegmentationServicer(store, catalog, Memberships(store, catalog, view, None), None, ())
        ask = pb.SummarizeRfmRequest()
        ask.at.FromNanoseconds(int(now * 1e9))
        view.loading = {3}  # partition 3 still coming from the profile service
        with pytest.raises(Unavailable, match="still rebuilding"):
            await servicer.SummarizeRfm(ask, None)
        with pytest.raises(Unavailable, match="still rebuilding"):
            await scoring.recompute()
        assert await scoring.due()
        assert not (await store.rfm_model()).customers  # nothing stored from the partial view
        view.loading = set()
        assert (await servicer.SummarizeRfm(ask, None)).summary == rfm.summary(*view.rfm_measures(RfmTraits(), now))
        assert (await scoring.recompute()).customers == 10
    finally:
        await store.close()
