"""RFM edges recomputed on a schedule, over every replica's customers.

The replica holding partition 0 recomputes every `interval` (MOSAIC_SEGMENTATION_RFM_SECONDS):
it summarises its own view's customers and asks every peer (MOSAIC_SEGMENTATION_PEERS) for
theirs at the same moment (SummarizeRfm, as Estimate asks them), merges the summaries into the
edges (rfm.edges) and stores them with the time. The edges are kept: a restart scores as before
and recomputes when the stored time is `interval` old. When the edges moved, the generation
grows, every catalog compiles the RFM conditions anew at its next reload, and the backfills of
every replica move the people whose scores changed in and out of the segments that read them,
each transition published once like any other. A peer that does not answer fails the round,
which is tried again, rather than scoring over part of the customers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import grpc
from google.protobuf import timestamp_pb2

from mosaic.platform.errors import AlreadyExists, Unavailable
from mosaic.platform.ownership import HeldPartitions
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from segmentation_service import compiler, rfm
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.store import SegmentStore

log = logging.getLogger("segmentation.rfm")
CHECK_SECONDS = 10.0  # how often a replica looks whether it holds partition 0 and a recompute is due


def local_summary(view: ColumnarView, traits: rfm.RfmTraits, now: float) -> segment_pb2.RfmSummary:
    """This replica's customers, summarised (what SummarizeRfm answers)."""
    return rfm.summary(*view.rfm_measures(traits, now))


def named_segments(now: float) -> list[segment_pb2.Segment]:
    """The named RFM segments, as stored when the service first starts."""
    segments = []
    for segment_id, name, text in rfm.NAMED:
        definition, expression = compiler.definition_of(text=text)
        segment = segment_pb2.Segment(
            segment_id=segment_id, name=name, definition=definition, expression=expression, revision=1
        )
        segment.created_at.FromNanoseconds(int(now * 1e9))
        segment.updated_at.CopyFrom(segment.created_at)
        segments.append(segment)
    return segments


class RfmScoring:
    def __init__(
        self,
        store: SegmentStore,
        catalog: SegmentCatalog,
        view: ColumnarView,
        ownership: HeldPartitions,
        peers: Sequence[segmentation_service_pb2_grpc.SegmentationServiceStub] = (),
        interval: float = 3600.0,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.view = view
        self.ownership = ownership
        self.peers = peers
        self.interval = interval
        self.wake = wake  # the backfiller's: new edges are backfilled at once
        self.clock = clock
        self.seconds = 0.0  # how long the last recompute took

    async def ready(self) -> None:
        """At the first start of the deployment: the named segments, and a model without edges
        (due at once). Every replica may do it at once: a segment already there is left."""
        if await self.store.rfm_model() is not None:
            return
        for segment in named_segments(self.clock()):
            try:
                await self.store.create(segment)
            except AlreadyExists:
                pass
        await self.store.init_rfm_model(segment_pb2.RfmModel())

    async def run(self) -> None:
        while True:
            try:
                if 0 in self.ownership.owned and await self.due():
                    async with self.ownership.working(0) as held:
                        if held:
                            await self.recompute()
            except Unavailable as error:  # a view still rebuilding, a peer away: the next check asks again
                log.info("RFM recompute waits: %s", error)
            except Exception:  # the store down, a bug: the next round tries again
                log.exception("RFM recompute failed")
            await asyncio.sleep(min(self.interval, CHECK_SECONDS))

    async def due(self) -> bool:
        """When the interval has passed; and at every check while there are no edges yet, so a new
        deployment scores its first customers within seconds rather than an interval later."""
        stored = await self.store.rfm_model()
        return (
            stored is None
            or not stored.customers
            or self.clock() - stored.computed_at.ToNanoseconds() / 1e9 >= self.interval
        )

    async def recompute(self) -> segment_pb2.RfmModel:
        """Edges over every replica's customers, stored; a new generation when they moved."""
        if self.view.loading:  # this replica's own view is partial: wait, as for a peer's
            raise Unavailable("segmentation view", f"partitions {sorted(self.view.loading)} are still rebuilding")
        started, now = time.monotonic(), self.clock()
        at = timestamp_pb2.Timestamp()
        at.FromNanoseconds(int(now * 1e9))
        ask = pb.SummarizeRfmRequest(at=at)
        try:
            answers = await asyncio.gather(*(peer.SummarizeRfm(ask, timeout=30) for peer in self.peers))
        except grpc.aio.AioRpcError as error:
            raise Unavailable("segmentation replica", error.details() or str(error.code())) from None
        shares = [local_summary(self.view, self.catalog.traits, now), *(a.summary for a in answers)]
        customers, recency, frequency, monetary = rfm.edges(shares)
        stored = await self.store.rfm_model() or segment_pb2.RfmModel()
        moved = (recency, frequency, monetary) != (
            tuple(stored.recency_edges),
            tuple(stored.frequency_edges),
            tuple(stored.monetary_edges),
        )
        model = segment_pb2.RfmModel(
            generation=stored.generation + int(moved),
            customers=customers,
            recency_edges=recency,
            frequency_edges=frequency,
            monetary_edges=monetary,
            computed_at=at,
        )
        await self.store.set_rfm_model(model)
        self.seconds = time.monotonic() - started
        if moved:
            self.catalog.invalidate()
            self.wake()
        log.info(
            "RFM edges recomputed",
            extra={
                "fields": {
                    "customers": customers,
                    "generation": model.generation,
                    "moved": moved,
                    "recency": list(recency),
                    "frequency": list(frequency),
                    "monetary": list(monetary),
                    "seconds": round(self.seconds, 3),
                }
            },
        )
        return model
