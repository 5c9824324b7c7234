"""The ingestion service: Ingest over gRPC; events.raw out. Ack means stored in JetStream."""

from __future__ import annotations

import asyncio

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2, ingestion_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.errors import InvalidArgument
from mosaic.platform.server import Runtime
from ingestion_service import envelope
from ingestion_service.config import Settings

S = ingestion_service_pb2.EventStatus


class IngestionServicer(ingestion_service_pb2_grpc.IngestionServiceServicer):
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def Ingest(self, request, context):
        if not request.source_id:
            raise InvalidArgument("source_id", "is required")
        if len(request.events) > envelope.MAX_BATCH:
            raise InvalidArgument("events", f"must hold at most {envelope.MAX_BATCH} events, holds {len(request.events)}")
        received_at = timestamp_pb2.Timestamp()
        received_at.GetCurrentTime()
        results: list[ingestion_service_pb2.EventResult] = []
        accepted: list[tuple[int, event_pb2.Event]] = []
        for index, event in enumerate(request.events):
            try:
                envelope.prepare(event, request.source_id, received_at)
            except InvalidArgument as error:
                results.append(ingestion_service_pb2.EventResult(
                    message_id=event.message_id, status=S.EVENT_STATUS_REJECTED,
                    field=f"events[{index}].{error.field}", reason=error.rule,
                ))
                continue
            results.append(ingestion_service_pb2.EventResult(message_id=event.message_id))
            accepted.append((index, event))
        # Published concurrently; if any publish is not confirmed the whole call fails with
        # UNAVAILABLE and the client retries the batch, which the message ids make safe.
        duplicates = await asyncio.gather(*(
            self.bus.publish(topics.EVENTS_RAW, envelope.partition_key(event), event, event.message_id)
            for _, event in accepted
        ))
        for (index, _), duplicate in zip(accepted, duplicates):
            results[index].status = S.EVENT_STATUS_DUPLICATE if duplicate else S.EVENT_STATUS_ACCEPTED
        return ingestion_service_pb2.IngestResponse(results=results)


async def build(runtime: Runtime, settings: Settings) -> None:
    ingestion_service_pb2_grpc.add_IngestionServiceServicer_to_server(IngestionServicer(runtime.bus), runtime.server)
    runtime.add_service(ingestion_service_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name)
