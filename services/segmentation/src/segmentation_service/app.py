"""The segmentation service: segments over gRPC; profile.updated, identity.merged and
identity.split in, segment.membership out."""

from __future__ import annotations

import asyncio
import logging

from mosaic.platform import topics
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from mosaic.segmentation.v1 import segmentation_service_pb2_grpc
from segmentation_service.backfill import Backfiller
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.config import Settings
from segmentation_service.membership import Memberships
from segmentation_service.privacy import SegmentationPrivacy
from segmentation_service.profiles import ProfileReader
from segmentation_service.server import SegmentationServicer
from segmentation_service.store import open_store
from segmentation_service.timers import Timers

log = logging.getLogger("segmentation")


async def build(runtime: Runtime, settings: Settings) -> None:
    platform = settings.platform
    store = await open_store(platform)
    runtime.cleanup.push_async_callback(store.close)
    owned = platform.owned_partitions
    catalog = SegmentCatalog(store)
    view = ColumnarView(platform.partitions)
    reader = ProfileReader(settings.profile_address, platform.security) if settings.profile_address else None
    timers = Timers(store, catalog, owned, settings.timer_interval)
    memberships = Memberships(store, catalog, view, runtime.bus, reader.fetch if reader else None, timers=timers)
    merged = {pid for partition in owned for pid in await store.merged(partition)}
    if reader is not None:
        runtime.cleanup.push_async_callback(reader.close)
        await reader.rebuild(view, owned, merged)
    else:
        log.warning("MOSAIC_PROFILE_ADDRESS not set: the view starts empty and fills from profile.updated")
    await memberships.publish_all_pending(owned)
    backfiller = Backfiller(store, catalog, memberships, owned, size_interval=settings.size_interval)
    tasks = [asyncio.create_task(backfiller.run()), asyncio.create_task(timers.run())]

    async def stop_tasks() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    runtime.cleanup.push_async_callback(stop_tasks)
    servicer = SegmentationServicer(store, catalog, memberships, backfiller, settings.peers, platform.security)
    runtime.cleanup.push_async_callback(servicer.close)
    segmentation_service_pb2_grpc.add_SegmentationServiceServicer_to_server(servicer, runtime.server)
    runtime.add_service(pb.DESCRIPTOR.services_by_name["SegmentationService"].full_name)
    runtime.bus.consume(topics.PROFILE_UPDATED, memberships.updated, owned)
    runtime.bus.consume(topics.IDENTITY_MERGED, memberships.merged, owned)
    runtime.bus.consume(topics.IDENTITY_SPLIT, memberships.split, owned)
    await runtime.bus.listen(topics.IDENTITY_MERGED, memberships.heard_merge)
    await runtime.bus.listen(topics.IDENTITY_SPLIT, memberships.heard_split)
    privacy = SegmentationPrivacy(store, platform.partitions)
    Participant("segmentation", runtime.bus, privacy.export, privacy.erase).start(owned)
