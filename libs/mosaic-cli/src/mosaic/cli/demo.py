"""The demo: a shop's customers (demo_data.py) loaded through the public APIs, segments defined
in the segment language, two webhook destinations to a receiver the demo runs, then a report of
what the mesh made of it, read back through the APIs too.

1. Sources `demo-web`, `demo-mobile`, `demo-crm`, `demo-pos`, and two webhook destinations for
   the RFM segments, with the `marketing` purpose.
2. The events in three phases (history, sign-ups and logins, orders) over gRPC `Ingest`, which
   answers per event (accepted, duplicate...), waiting between phases until the mesh is idle, so
   the journeys happen in their order.
3. Four segments (two of them RFM) defined in the segment language; their backfill enters the
   members, and the members with marketing consent get a webhook.
4. Once the members are what each definition gives (Estimate) and nothing is queued anywhere: every customer's identifiers looked up (how many profiles,
   whether each anonymous visitor ended on the customer's profile), the segments' members, and
   the deliveries the receiver got.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from mosaic.cli import connect
from mosaic.cli.backlog import Idle, Waiter
from mosaic.cli.demo_data import PHASES, SOURCES, Customer, DataSet, generate
from mosaic.cli.demo_webhook import DemoWebhook
from mosaic.cli.mesh import Mesh
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2, delivery_service_pb2_grpc
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2, ingestion_service_pb2_grpc, source_pb2
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2, segmentation_service_pb2_grpc

ORDER = '"Order Completed"'
SEGMENTS = {
    "recent-big-spenders": (
        "Recent big spenders: ordered in the last 30 days, 3+ orders in 90 days, 250+ spent",
        f"count(event {ORDER} in last 30d) >= 1 and count(event {ORDER} in last 90d) >= 3"
        " and computed.lifetime_value >= 250",
    ),
    "lapsed-repeat-buyers": (
        "Lapsed repeat buyers: 2+ orders, none in the last 45 days",
        f"computed.orders >= 2 and count(event {ORDER} in last 45d) = 0",
    ),
    "one-time-buyers": ("Bought exactly once", "computed.orders = 1"),
    "signed-up-never-bought": ("Known customers without an order", f"is known and count(event {ORDER} ever) = 0"),
    # An event property: read from an event series the profile service backfills from its archive.
    "big-baskets": (
        "Big baskets: an order of 150+ in the last 90 days",
        f"max(event {ORDER}.revenue in last 90d) >= 150",
    ),
}
# Destination id -> (receiver path, segment): a VIP offer for champions, a win-back for the others.
DESTINATIONS = {"vip-offers": ("/vip", "recent-big-spenders"), "win-back": ("/win-back", "lapsed-repeat-buyers")}
BATCH = 500
LOOKUPS_IN_FLIGHT = 32


@dataclass
class Report:
    customers: int
    events_sent: int
    outcomes: Counter  # accepted, duplicate, rejected... as ingestion answered
    identifiers: int
    profiles: int  # distinct profiles the customers resolve to
    anonymous_ids: int
    anonymous_unified: int  # anonymous ids that resolve to their customer's profile
    merges_expected: int
    segments: dict[str, int]
    deliveries: dict[str, int]  # destination -> webhook POSTs the receiver got
    write_key: str  # demo-web's, for the curl example
    example: tuple[str, str, str] = ("", "", "")  # user id, profile id, an order's message id
    seconds: float = 0.0
    refusals: Counter = field(default_factory=Counter)  # "field: reason" of events not accepted


async def _ignore_exists(call) -> None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


async def _write_key(ingestion, source_id: str, name: str) -> str:
    """A write key of the source: issued when it is created, rotated on later runs."""
    try:
        created = await ingestion.CreateSource(
            ingestion_service_pb2.CreateSourceRequest(source=source_pb2.Source(source_id=source_id, name=name))
        )
        return created.source.write_keys[0].secret
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    rotated = await ingestion.RotateWriteKey(ingestion_service_pb2.RotateWriteKeyRequest(source_id=source_id))
    return rotated.write_key.secret


async def run_demo(mesh: Mesh, receiver: DemoWebhook, customers: int = 3000, seed: int = 7) -> Report:
    """Load the demo data set into the mesh and report on it. Raises DemoStalled when the mesh
    stops making progress."""
    started = time.monotonic()
    nats_url = mesh.env["MOSAIC_NATS_URL"]
    waiter = Waiter(nats_url, poll=1.0)  # each poll of a wait asks NATS about every stream
    channels = {name: connect.channel(mesh.address(name)) for name in mesh.ports}
    ingestion = ingestion_service_pb2_grpc.IngestionServiceStub(channels["ingestion"])
    segmentation = segmentation_service_pb2_grpc.SegmentationServiceStub(channels["segmentation"])
    delivery = delivery_service_pb2_grpc.DeliveryServiceStub(channels["delivery"])
    try:
        keys = {source: await _write_key(ingestion, f"demo-{source}", f"Demo {source}") for source in SOURCES}
        for destination_id, (path, segment_id) in DESTINATIONS.items():
            destination = delivery_pb2.Destination(
                destination_id=destination_id,
                name=f"Demo webhook {destination_id}",
                webhook_url=receiver.url(path),
                segment_id=segment_id,
                purpose="marketing",
            )
            await _ignore_exists(
                delivery.CreateDestination(delivery_service_pb2.CreateDestinationRequest(destination=destination))
            )
        data = generate(customers, seed)
        posts_before = Counter(request.path for request in receiver.requests)
        outcomes: Counter = Counter()
        refusals: Counter = Counter()  # why events were rejected or quarantined
        for phase in PHASES:
            for source in SOURCES:
                events = data.events[phase][source]
                for start in range(0, len(events), BATCH):
                    answer = await ingestion.Ingest(
                        ingestion_service_pb2.IngestRequest(
                            source_id=f"demo-{source}", events=events[start : start + BATCH]
                        )
                    )
                    for result in answer.results:
                        outcomes[
                            ingestion_service_pb2.EventStatus.Name(result.status).removeprefix("EVENT_STATUS_").lower()
                        ] += 1
                        if result.reason:
                            refusals[f"{result.field.partition('.')[2] or result.field}: {result.reason}"] += 1
            async with Idle(nats_url) as idle:
                await waiter.until(f"the {phase} events to flow through", idle)
        # Defined once the history is in, their backfill finds the members; defined before, a
        # replayed history would pass people through segments they only belonged to long ago.
        for segment_id, (name, definition) in SEGMENTS.items():
            segment = segment_pb2.Segment(segment_id=segment_id, name=name, definition=definition)
            await _ignore_exists(
                segmentation.CreateSegment(segmentation_service_pb2.CreateSegmentRequest(segment=segment))
            )
        async with Idle(nats_url) as idle:
            members = await waiter.until("the segments' backfills", lambda: _backfilled(segmentation, idle))
        assert members is not None  # until() returns only what it waited for, or raises
        report = Report(
            customers=customers,
            events_sent=data.event_count,
            outcomes=outcomes,
            identifiers=data.identifier_count,
            profiles=0,
            anonymous_ids=sum(len(c.anonymous_ids) for c in data.customers),
            anonymous_unified=0,
            merges_expected=data.expected_merges,
            segments={},
            deliveries={},
            write_key=keys["web"],
            refusals=refusals,
        )
        profile_of = await _resolve(identity_service_pb2_grpc.IdentityServiceStub(channels["identity"]), data)
        report.profiles = len({profile_of[_key(c)] for c in data.customers if _key(c) in profile_of})
        report.anonymous_unified = sum(
            1
            for c in data.customers
            for a in c.anonymous_ids
            if ("anonymous_id", a) in profile_of and profile_of[("anonymous_id", a)] == profile_of.get(_key(c))
        )
        report.segments = {segment_id: len(ids) for segment_id, ids in members.items()}
        posts = Counter(request.path for request in receiver.requests) - posts_before
        report.deliveries = {destination_id: posts[path] for destination_id, (path, _) in DESTINATIONS.items()}
        report.example = _example(data, profile_of, members["recent-big-spenders"])
        report.seconds = time.monotonic() - started
        return report
    finally:
        for channel in channels.values():
            await channel.close()


async def _backfilled(segmentation, idle: Idle) -> dict[str, list[str]] | None:
    """Each segment's members, once they are what its definition gives over the profiles now
    (Estimate) and nothing is queued; None until then."""
    members: dict[str, list[str]] = {}
    for segment_id, (_, definition) in SEGMENTS.items():
        stream = segmentation.ListMembers(segmentation_service_pb2.ListMembersRequest(segment_id=segment_id))
        members[segment_id] = [m.profile_id async for m in stream]
        estimate = await segmentation.Estimate(segmentation_service_pb2.EstimateRequest(definition=definition))
        if estimate.count != len(members[segment_id]):
            return None
    return members if await idle() else None


def _key(customer: Customer) -> tuple[str, str]:
    """The identifier a customer is looked up by: the user id, or a till customer's e-mail."""
    return ("user_id", customer.user_id) if customer.user_id else ("email", customer.email)


async def _resolve(identity, data: DataSet) -> dict[tuple[str, str], str]:
    """(type, value) -> profile id for every customer's key and anonymous ids."""
    wanted = [_key(c) for c in data.customers] + [("anonymous_id", a) for c in data.customers for a in c.anonymous_ids]
    found: dict[tuple[str, str], str] = {}
    slots = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)

    async def lookup(kind: str, value: str) -> None:
        async with slots:
            try:
                answer = await identity.Lookup(
                    identity_service_pb2.LookupRequest(identifier=identity_pb2.Identifier(type=kind, value=value))
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return
            found[(kind, value)] = answer.profile_id

    await asyncio.gather(*(lookup(kind, value) for kind, value in wanted))
    return found


def _example(data: DataSet, profile_of, champions: list[str]) -> tuple[str, str, str]:
    """A champion whose journey merged two profiles if there is one (else any champion, else
    the first customer): user id, profile id and the message id of their last order."""
    by_profile = {profile_of.get(_key(c)): c for c in data.customers}
    chosen = [by_profile[p] for p in champions if p in by_profile]
    merged = [c for c in chosen if c.channel in ("crm", "pos") and c.anonymous_ids]
    customer = (merged or chosen or data.customers)[0]
    orders = [
        event.message_id
        for events in data.events["orders"].values()
        for event in events
        if customer.user_id and event.user_id == customer.user_id
    ]
    return customer.user_id, profile_of.get(_key(customer), ""), orders[-1] if orders else ""
