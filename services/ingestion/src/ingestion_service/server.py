"""The ingestion service's gRPC API: Ingest and IngestStream (ack means stored in JetStream),
and the administration of sources and quarantine (admin.py)."""

from __future__ import annotations

import asyncio
from collections import deque

from google.protobuf import timestamp_pb2

from ingestion_service import envelope
from ingestion_service.admin import AdminRpcs
from ingestion_service.intake import Intake, Tally
from ingestion_service.ratelimit import RateLimited
from ingestion_service.sources import ActiveSource, SourceDirectory
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc
from mosaic.platform.errors import InvalidArgument

S = pb  # EVENT_STATUS_* as module-level ints, cheaper than the enum wrapper's lookups
# Batches of one stream being stored at once: the next is read and checked while the last
# waits for JetStream, which keeps the connection busy without unbounded memory.
STREAM_WINDOW = 4


class IngestionServicer(AdminRpcs, ingestion_service_pb2_grpc.IngestionServiceServicer):
    def __init__(self, intake: Intake, sources: SourceDirectory) -> None:
        self.intake = intake
        self.sources = sources

    async def Ingest(self, request, context):
        active = await self.intake.source(request.source_id)
        _check_batch(request.events)
        self.intake.admit(active, len(request.events))
        return pb.IngestResponse(results=await self._batch(active, request.events, 0))

    async def IngestStream(self, request_iterator, context):
        tally, problems = Tally(), []
        active: ActiveSource | None = None
        in_flight: deque[asyncio.Task[list[pb.EventResult]]] = deque()
        index = 0

        def collect(results: list[pb.EventResult]) -> None:
            tally.add(results)
            problems.extend(r for r in results if r.status in (S.EVENT_STATUS_REJECTED, S.EVENT_STATUS_QUARANTINED))

        try:
            async for request in request_iterator:
                if active is None:
                    active = await self.intake.source(request.source_id)
                elif request.source_id and request.source_id != active.source_id:
                    raise InvalidArgument("source_id", "must be the same on every message of a stream")
                _check_batch(request.events)
                await self._admit_waiting(active, len(request.events))
                in_flight.append(asyncio.create_task(self._batch(active, request.events, index)))
                index += len(request.events)
                while len(in_flight) >= STREAM_WINDOW or (in_flight and in_flight[0].done()):
                    collect(await in_flight.popleft())
            while in_flight:
                collect(await in_flight.popleft())
        finally:
            for task in in_flight:
                task.cancel()
        return pb.IngestStreamResponse(
            accepted=tally[S.EVENT_STATUS_ACCEPTED],
            duplicate=tally[S.EVENT_STATUS_DUPLICATE],
            rejected=tally[S.EVENT_STATUS_REJECTED],
            quarantined=tally[S.EVENT_STATUS_QUARANTINED],
            suppressed=tally[S.EVENT_STATUS_SUPPRESSED],
            problems=problems,
        )

    async def _admit_waiting(self, active: ActiveSource, events: int) -> None:
        # A stream has flow control: over its rate it is slowed down, not failed.
        while True:
            try:
                return self.intake.admit(active, events)
            except RateLimited as limited:
                await asyncio.sleep(limited.retry_after)

    async def _batch(self, active: ActiveSource, events, offset: int) -> list[pb.EventResult]:
        received_at = timestamp_pb2.Timestamp()
        received_at.GetCurrentTime()
        results: list[pb.EventResult] = []
        valid: list[tuple[int, event_pb2.Event]] = []
        for position, event in enumerate(events):
            try:
                envelope.prepare(event, active.source_id, received_at)
            except InvalidArgument as error:
                results.append(
                    pb.EventResult(
                        message_id=event.message_id,
                        status=S.EVENT_STATUS_REJECTED,
                        index=offset + position,
                        field=f"events[{position}].{error.field}",
                        reason=error.rule,
                    )
                )
                continue
            results.append(pb.EventResult())
            valid.append((position, event))
        for (position, _), result in zip(valid, await self.intake.ingest(active, [e for _, e in valid]), strict=False):
            result.index = offset + position
            results[position] = result
        return results


def _check_batch(events) -> None:
    if len(events) > envelope.MAX_BATCH:
        raise InvalidArgument("events", f"must hold at most {envelope.MAX_BATCH} events, holds {len(events)}")
