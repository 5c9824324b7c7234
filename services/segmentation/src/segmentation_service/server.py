"""The segmentation service's gRPC API: segments defined, previewed and estimated, their members and sizes."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import grpc

from mosaic.platform import clients, limits
from mosaic.platform.config import SecuritySettings
from mosaic.platform.consent import Policy
from mosaic.platform.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mosaic.profile.v1.profile_service_pb2 import DefineEventSeriesRequest
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from segmentation_service import compiler, series
from segmentation_service.backfill import Backfiller
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.evaluate import DEFAULT_POLICY
from segmentation_service.membership import Memberships
from segmentation_service.profiles import ProfileReader, SeriesGate
from segmentation_service.scoring import local_summary
from segmentation_service.store import SegmentStore


def _required(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")


class SegmentationServicer(segmentation_service_pb2_grpc.SegmentationServiceServicer):
    def __init__(
        self,
        store: SegmentStore,
        catalog: SegmentCatalog,
        memberships: Memberships,
        backfiller: Backfiller,
        peers: tuple[str, ...] = (),
        security: SecuritySettings = SecuritySettings(),
        policy: Policy = DEFAULT_POLICY,
        reader: ProfileReader | None = None,
        gate: SeriesGate | None = None,
    ) -> None:
        self.channels = [clients.channel(peer, security) for peer in peers]
        self.peers = [segmentation_service_pb2_grpc.SegmentationServiceStub(c) for c in self.channels]
        self.store = store
        self.catalog = catalog
        self.memberships = memberships
        self.backfiller = backfiller
        self.policy = policy
        self.reader = reader
        self.gate = gate

    def _check_purposes(self, compiled: compiler.Compiled, field: str) -> None:
        for purpose in compiler.consent_purposes(compiled):
            if purpose not in self.policy.purposes:
                raise InvalidArgument(
                    field,
                    f"consent {purpose!r}: must be one of the configured purposes: {', '.join(self.policy.purposes)}",
                )

    def _series(self, compiled: compiler.Compiled, field: str) -> list[DefineEventSeriesRequest]:
        """The event series the definition reads; FAILED_PRECONDITION without the profile service
        that keeps them."""
        needed = series.needed(compiled.expression)
        if needed and (self.reader is None or self.gate is None):
            raise FailedPrecondition(
                field,
                "an event property or filter reads an event series, kept by the profile service: "
                "MOSAIC_PROFILE_ADDRESS is not set",
            )
        return needed

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def _prepared(self, segment: segment_pb2.Segment) -> segment_pb2.Segment:
        """The segment as stored: canonical text and tree, checked against the others."""
        if not compiler.SEGMENT_ID.match(segment.segment_id):
            raise InvalidArgument("segment.segment_id", "must be 1-64 lower-case letters, digits, - or _")
        if not segment.name:
            raise InvalidArgument("segment.name", "is required")
        text, expression = compiler.definition_of(segment)
        if segment.purpose and segment.purpose not in self.policy.purposes:
            raise InvalidArgument(
                "segment.purpose", f"must be one of the configured purposes: {', '.join(self.policy.purposes)}"
            )
        stored = segment_pb2.Segment()
        stored.CopyFrom(segment)
        stored.ClearField("condition")
        stored.definition = text
        stored.expression.CopyFrom(expression)
        compiled = await self.catalog.compile(segment.segment_id, compiler.tied(stored))  # references exist, no cycle
        self._check_purposes(compiled, "segment.definition")
        if needed := self._series(compiled, "segment.definition"):
            assert self.reader is not None  # _series checked
            await self.reader.define_series(needed)  # its backfill waits for theirs (backfill.py)
        stored.updated_at.GetCurrentTime()
        return stored

    async def CreateSegment(self, request, context):
        segment = await self._prepared(request.segment)
        segment.created_at.CopyFrom(segment.updated_at)
        segment.revision = 1
        await self.store.create(segment)
        self.backfiller.wake()
        return pb.CreateSegmentResponse(segment=segment)

    async def UpdateSegment(self, request, context):
        current = await self.store.get(request.segment.segment_id)
        if current is None:
            raise NotFound("segment", request.segment.segment_id)
        segment = await self._prepared(request.segment)
        segment.created_at.CopyFrom(current.created_at)
        segment.revision = current.revision + 1
        await self.store.replace(segment)
        self.backfiller.wake()
        return pb.UpdateSegmentResponse(segment=segment)

    async def DeleteSegment(self, request, context):
        _required(request.segment_id, "segment_id")
        current = await self.store.get(request.segment_id)
        if current is None:
            raise NotFound("segment", request.segment_id)
        self.catalog.invalidate()
        referrers = await self.catalog.referrers(request.segment_id)
        if referrers:
            raise FailedPrecondition("segment", f"{request.segment_id!r} is referred to by {', '.join(referrers)}")
        await self.store.delete(request.segment_id)
        self.catalog.invalidate()
        await self.backfiller.exit_all(request.segment_id, current.revision)
        return pb.DeleteSegmentResponse()

    async def GetSegment(self, request, context):
        _required(request.segment_id, "segment_id")
        segment = await self.store.get(request.segment_id)
        if segment is None:
            raise NotFound("segment", request.segment_id)
        return pb.GetSegmentResponse(segment=segment)

    async def ListSegments(self, request, context):
        size = limits.page_size(request.page_size, 100, 1000)
        found = await self.store.page(limits.after_key(request.page_token), size + 1)
        segments, token = limits.page_by_key(found, lambda s: s.segment_id, size)
        return pb.ListSegmentsResponse(segments=segments, next_page_token=token)

    async def IsMember(self, request, context):
        _required(request.segment_id, "segment_id")
        _required(request.profile_id, "profile_id")
        member, version = await self.store.membership(request.segment_id, request.profile_id)
        return pb.IsMemberResponse(member=member, profile_version=version)

    async def ListMembers(self, request, context):
        _required(request.segment_id, "segment_id")
        if await self.store.get(request.segment_id) is None:
            raise NotFound("segment", request.segment_id)
        for partition in range(self.memberships.bus.partitions):
            for profile_id, version in await self.store.members(request.segment_id, partition):
                yield pb.ListMembersResponse(profile_id=profile_id, profile_version=version)

    async def GetProfileSegments(self, request, context):
        _required(request.profile_id, "profile_id")
        memberships = await self.store.profile_memberships(request.profile_id)
        return pb.GetProfileSegmentsResponse(segment_ids=sorted(k for k, (member, _) in memberships.items() if member))

    async def GetSegmentSizes(self, request, context):
        _required(request.segment_id, "segment_id")
        if not 0 <= request.days <= 400:
            raise InvalidArgument("days", "must be from 0 (30) to 400")
        if await self.store.get(request.segment_id) is None:
            raise NotFound("segment", request.segment_id)
        since = datetime.now(timezone.utc) - timedelta(days=(request.days or 30) - 1)
        sizes = await self.store.sizes(request.segment_id, since.strftime("%Y-%m-%d"))
        return pb.GetSegmentSizesResponse(sizes=[pb.SegmentSize(day=d, count=sizes[d]) for d in sorted(sizes)])

    async def Estimate(self, request, context):
        text, expression = compiler.definition_of(
            text=request.definition,
            expression=(request.expression if request.HasField("expression") else None),
            field="",
        )
        compiled = await self.catalog.compile("-estimate-", expression)
        self._check_purposes(compiled, "definition")
        # Every replica, asked first or by a peer, answers only once the series' backfill is
        # whole and handled on the partitions it holds (a half-done one would count profiles
        # without their past); the first to ask defines the series.
        if needed := self._series(compiled, "definition"):
            assert self.gate is not None  # _series checked
            if waiting := await self.gate.waiting(needed, self.backfiller.ownership.owned):
                raise FailedPrecondition(
                    "definition",
                    "reads event series whose backfill from the event archive is under way ("
                    + "; ".join(f"{name}: {why}" for name, why in sorted(waiting.items()))
                    + "): estimate again in a while",
                )
        sample = 10 if request.sample_size <= 0 else min(request.sample_size, 100)
        view = self.memberships.view
        mask = view.evaluate(compiled.expression, time.time())
        answer = pb.EstimateResponse(
            count=int(mask.sum()), population=len(view), sample=view.profile_ids(mask, sample), definition=text
        )
        if request.local_only or not self.peers:
            return answer
        # The other replicas hold the other partitions: ask each for its share.
        ask = pb.EstimateRequest(expression=expression, sample_size=sample, local_only=True)
        try:
            shares = await asyncio.gather(*(peer.Estimate(ask, timeout=10) for peer in self.peers))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:  # a peer's partitions not ready yet
                raise FailedPrecondition("definition", f"another replica: {error.details()}") from None
            raise Unavailable("segmentation replica", error.details() or str(error.code())) from None
        for share in shares:
            answer.count += share.count
            answer.population += share.population
            answer.sample.extend(share.sample[: sample - len(answer.sample)])
        return answer

    async def GetRfmModel(self, request, context):
        return pb.GetRfmModelResponse(model=await self.store.rfm_model())

    async def SummarizeRfm(self, request, context):
        if not request.HasField("at"):
            raise InvalidArgument("at", "is required")
        at = request.at.seconds + request.at.nanos / 1e9
        loading = self.memberships.view.loading
        if loading:  # a partial summary would skew the edges: the recompute asks again later
            raise Unavailable("segmentation view", f"partitions {sorted(loading)} are still rebuilding")
        return pb.SummarizeRfmResponse(summary=local_summary(self.memberships.view, self.catalog.traits, at))
