"""The segmentation service: segments over gRPC; profile.updated, identity.merged and
identity.split in, segment.membership out."""

from __future__ import annotations

import asyncio
import logging
import time

from mosaic.platform import tasks, topics
from mosaic.platform.privacy import Participant, hear_in_flight
from mosaic.platform.server import Runtime
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from mosaic.segmentation.v1 import segmentation_service_pb2_grpc
from segmentation_service.backfill import Backfiller
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.config import Settings
from segmentation_service.membership import Memberships
from segmentation_service.privacy import SegmentationPrivacy
from segmentation_service.profiles import ProfileReader, SeriesGate
from segmentation_service.scoring import RfmScoring
from segmentation_service.server import SegmentationServicer
from segmentation_service.store import open_store
from segmentation_service.timers import Timers

log = logging.getLogger("segmentation")
FORGOTTEN_PER_TURN = 1000  # rows removed from the view between two turns of the loop


async def forget(view: ColumnarView, partitions: frozenset[int]) -> int:
    """Remove the rows of partitions handed over to another replica; how many. A row takes
    ~10 us, so half of a million-profile view is seconds: a chunk at a time, the loop let run
    between (lease renewals and the partitions kept go on)."""
    gone = view.profiles_of(partitions)
    for first in range(0, len(gone), FORGOTTEN_PER_TURN):
        for profile_id in gone[first : first + FORGOTTEN_PER_TURN]:
            view.remove(profile_id)
        await asyncio.sleep(0)
    return len(gone)


async def build(runtime: Runtime, settings: Settings) -> None:
    platform = settings.platform
    store = await open_store(platform)
    runtime.cleanup.push_async_callback(store.close)
    ownership = runtime.ownership
    catalog = SegmentCatalog(store, traits=settings.rfm_traits)
    view = ColumnarView(platform.partitions, policy=settings.policy)
    reader = ProfileReader(settings.profile_address, platform.security) if settings.profile_address else None
    timers = Timers(store, catalog, ownership, settings.timer_interval)
    memberships = Memberships(store, catalog, view, runtime.bus, reader.fetch if reader else None, timers=timers)
    if reader is not None:
        runtime.cleanup.push_async_callback(reader.close)
    else:
        log.warning("MOSAIC_PROFILE_ADDRESS not set: the view starts empty and fills from profile.updated")
    gate = SeriesGate(reader, memberships.handled) if reader is not None else None
    backfiller = Backfiller(store, catalog, memberships, ownership, size_interval=settings.size_interval, gate=gate)

    async def acquired(partitions: frozenset[int]) -> None:
        # The view holds the profiles of the partitions this replica holds: load the new ones
        # before their consumers start, publish what a crash left pending, backfill what is left.
        view.loading |= partitions  # no RFM summary of this view until they are in
        try:
            merged = {pid for partition in partitions for pid in await store.merged(partition)}
            # Erased profiles stay out (ScanProfiles has none; a late profile.updated may).
            since = time.time() - topics.PROFILE_UPDATED.max_age
            for partition in partitions:
                view.remember_erased(await store.erased(partition, since))
            if reader is not None:
                # The scan is newer than every profile.updated stored before it began.
                stored = await runtime.bus.jetstream.stream_info(topics.PROFILE_UPDATED.stream)
                await reader.rebuild(view, partitions, merged)
                memberships.handled.update(dict.fromkeys(partitions, stored.state.last_seq))
        finally:
            view.loading -= partitions
        await backfiller.load(partitions)
        await memberships.publish_all_pending(partitions)
        backfiller.wake()

    async def released(partitions: frozenset[int]) -> None:
        await forget(view, partitions)  # the next holder's view counts them now
        for partition in partitions:
            memberships.handled.pop(partition, None)

    ownership.follow(acquired, released)
    servicer = SegmentationServicer(
        store, catalog, memberships, backfiller, settings.peers, platform.security, settings.policy, reader, gate
    )
    runtime.cleanup.push_async_callback(servicer.close)
    scoring = RfmScoring(store, catalog, view, ownership, servicer.peers, settings.rfm_interval, wake=backfiller.wake)
    await scoring.ready()
    background = [
        asyncio.create_task(backfiller.run()),
        asyncio.create_task(timers.run()),
        asyncio.create_task(scoring.run()),
    ]
    runtime.cleanup.push_async_callback(tasks.cancel, *background)
    segmentation_service_pb2_grpc.add_SegmentationServiceServicer_to_server(servicer, runtime.server)
    runtime.add_service(pb.DESCRIPTOR.services_by_name["SegmentationService"].full_name)
    runtime.bus.consume(topics.PROFILE_UPDATED, memberships.updated, batch_handler=memberships.updated_batch)
    runtime.bus.consume(topics.IDENTITY_MERGED, memberships.merged)
    runtime.bus.consume(topics.IDENTITY_SPLIT, memberships.split)
    await runtime.bus.listen(topics.IDENTITY_MERGED, memberships.heard_merge)
    await runtime.bus.listen(topics.IDENTITY_SPLIT, memberships.heard_split)
    await runtime.bus.listen(topics.PRIVACY_REQUESTED, memberships.heard_privacy)

    async def catch_up() -> None:
        # The connection is back: erasure notices may have been missed (Bus.listen is at most
        # once). Those still in flight are heard again; a request gone from the stream is
        # complete, so its segmentation_erased rows are stored and the view drops their rows.
        await hear_in_flight(runtime.bus.jetstream, memberships.heard_privacy)
        since = time.time() - topics.PROFILE_UPDATED.max_age
        keys = [key for partition in range(platform.partitions) for key in await store.erased(partition, since)]
        if dropped := view.drop_erased(keys):
            log.info("dropped erased profiles missed while disconnected", extra={"fields": {"profiles": dropped}})

    runtime.bus.on_reconnect(catch_up)
    privacy = SegmentationPrivacy(store, platform.partitions, view)
    Participant("segmentation", runtime.bus, privacy.export, privacy.erase).start()
