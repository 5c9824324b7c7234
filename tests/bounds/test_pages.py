"""Pages of the List RPCs that had none: a walk page by page gives every item once, in key
order (purposes: in the order configured); a bad page token or a negative page size is
INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from delivery_service.store import open_store as open_delivery_store
from mosaic.consent.v1 import consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2_grpc
from mosaic.delivery.v1 import delivery_service_pb2 as delivery
from mosaic.ingestion.v1 import ingestion_service_pb2 as ingestion
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2
from mosaic.profile.v1 import profile_pb2, profile_service_pb2_grpc
from mosaic.profile.v1 import profile_service_pb2 as profile
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2 as segmentation

NAMES = [f"item_{i:02d}" for i in (7, 3, 11, 0, 5, 9, 1)]  # created out of order


@dataclass
class Listing:
    services: tuple[str, ...]  # started in this order
    stub: Callable[[grpc.aio.Channel], Any]
    method: str
    request: Callable[..., Any]
    items: str
    key: Callable[[Any], str]
    fill: Callable[[Any, Any], Awaitable[set[str]]]  # creates items; answers the keys created
    by_key: bool = True  # pages in key order (else in the one-call listing's order)


async def _sources(stub, started) -> set[str]:
    for name in NAMES:
        await stub.CreateSource(ingestion.CreateSourceRequest(source=source_pb2.Source(source_id=name)))
    return set(NAMES)


async def _traits(stub, started) -> set[str]:
    for name in NAMES:
        definition = profile_pb2.ComputedTraitDefinition(name=name, aggregation=profile_pb2.AGGREGATION_COUNT)
        definition.event = "Clicked"
        await stub.CreateComputedTrait(profile.CreateComputedTraitRequest(definition=definition))
    return set(NAMES)


async def _segments(stub, started) -> set[str]:
    for name in NAMES:
        segment = segment_pb2.Segment(segment_id=name, name=name, definition='traits.plan = "pro"')
        await stub.CreateSegment(segmentation.CreateSegmentRequest(segment=segment))
    return set(NAMES)


async def _purposes(stub, started) -> set[str]:
    return set()  # the deployment's configured purposes


async def _destinations(stub, started) -> set[str]:
    for name in NAMES:
        destination = delivery_pb2.Destination(
            destination_id=name,
            name=name,
            webhook_url=f"http://127.0.0.1:9/{name}",
            segment_id="vip",
            purpose="marketing",
        )
        await stub.CreateDestination(delivery.CreateDestinationRequest(destination=destination))
    return set(NAMES)


async def _deliveries(stub, started) -> set[str]:
    # Records as the workers write them, into the service's own store.
    store = await open_delivery_store(started.services["delivery"].settings)
    try:
        await store.save_deliveries(
            [delivery_pb2.Delivery(delivery_id=name, profile_id="p-ada", destination_id="crm") for name in NAMES]
        )
    finally:
        await store.close()
    return set(NAMES)


LISTINGS = {
    "ListSources": Listing(
        ("ingestion",),
        ingestion_service_pb2_grpc.IngestionServiceStub,
        "ListSources",
        ingestion.ListSourcesRequest,
        "sources",
        lambda s: s.source_id,
        _sources,
    ),
    "ListComputedTraits": Listing(
        ("profile",),
        profile_service_pb2_grpc.ProfileServiceStub,
        "ListComputedTraits",
        profile.ListComputedTraitsRequest,
        "definitions",
        lambda d: d.name,
        _traits,
    ),
    "ListSegments": Listing(
        ("segmentation",),
        segmentation_service_pb2_grpc.SegmentationServiceStub,
        "ListSegments",
        segmentation.ListSegmentsRequest,
        "segments",
        lambda s: s.segment_id,
        _segments,
    ),
    "ListPurposes": Listing(
        ("consent",),
        consent_service_pb2_grpc.ConsentServiceStub,
        "ListPurposes",
        consent_service_pb2.ListPurposesRequest,
        "purposes",
        lambda p: p.name,
        _purposes,
        by_key=False,
    ),
    "ListDestinations": Listing(
        ("consent", "delivery"),
        delivery_service_pb2_grpc.DeliveryServiceStub,
        "ListDestinations",
        delivery.ListDestinationsRequest,
        "destinations",
        lambda d: d.destination_id,
        _destinations,
    ),
    "ListDeliveries": Listing(
        ("consent", "delivery"),
        delivery_service_pb2_grpc.DeliveryServiceStub,
        "ListDeliveries",
        lambda **fields: delivery.ListDeliveriesRequest(profile_id="p-ada", **fields),
        "deliveries",
        lambda d: d.delivery_id,
        _deliveries,
    ),
}


def _field_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    bad = error_details_pb2.BadRequest()
    assert status is not None and status.details[0].Unpack(bad)
    return bad.field_violations[0].field


@pytest.mark.parametrize("name", LISTINGS)
async def test_a_walk_page_by_page_gives_every_item_once_in_key_order(name, start_services):
    listing = LISTINGS[name]
    started = await start_services(*listing.services, MOSAIC_DELIVERY_ALLOW_ADDRESSES="loopback")
    async with grpc.aio.insecure_channel(started.address(listing.services[-1])) as channel:
        stub = listing.stub(channel)
        call = getattr(stub, listing.method)
        created = await listing.fill(stub, started)
        whole = [listing.key(i) for i in getattr(await call(listing.request(page_size=1000)), listing.items)]
        assert created <= set(whole) and len(whole) >= 3

        walked, token, pages = [], "", 0
        while True:
            page = await call(listing.request(page_size=2, page_token=token))
            keys = [listing.key(i) for i in getattr(page, listing.items)]
            assert 1 <= len(keys) <= 2
            walked += keys
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert walked == (sorted(whole) if listing.by_key else whole) and len(set(walked)) == len(walked)
        assert pages == (len(whole) + 1) // 2

        for request, field in (
            (listing.request(page_token="not a token!"), "page_token"),
            (listing.request(page_token="AAAA"), "page_token"),  # base64, but not of a key
            (listing.request(page_token="-5"), "page_token"),
            (listing.request(page_size=-1), "page_size"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _field_of(refused.value) == field
