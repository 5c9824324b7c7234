"""A stream at its bound on disk refuses new events: senders are told to retry (503 with
Retry-After) and every event accepted before it filled is still stored."""

from __future__ import annotations

import json

import aiohttp
import grpc

from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2


async def test_a_full_stream_refuses_with_503_and_keeps_what_it_accepted(recorded_metrics, start_ingestion, stored):
    refused_before = _refused(recorded_metrics)
    ingestion = await start_ingestion(MOSAIC_NATS_STREAM_MAX_MESSAGES="53")
    async with grpc.aio.insecure_channel(ingestion.grpc_address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        answer = await stub.CreateSource(pb.CreateSourceRequest(source=source_pb2.Source(source_id="web")))
    key = answer.source.write_keys[0].secret
    accepted: list[str] = []
    async with aiohttp.ClientSession(
        base_url=ingestion.http_url, headers={"Authorization": aiohttp.encode_basic_auth(key, "")}
    ) as http:
        for n in range(200):  # 5 a batch: the eleventh does not fit
            ids = [f"m{n}-{i}" for i in range(5)]
            body = {"batch": [{"type": "track", "userId": f"u{n}", "event": "Clicked", "messageId": m} for m in ids]}
            async with http.post("/v1/batch", data=json.dumps(body)) as response:
                text = await response.text()
                if response.status == 503:
                    break
                assert response.status == 200, text
                accepted.extend(ids)
        else:
            raise AssertionError("the stream never filled")
    assert "Retry-After" in response.headers
    assert "is full" in text and "MOSAIC_NATS_STREAM_MAX_MESSAGES" in text
    assert len(accepted) == 50  # ten whole batches fit in 53; the eleventh is refused
    # The refused batch, counted where dashboards see backpressure.
    assert _refused(recorded_metrics) - refused_before == 5
    kept = [event.message_id for _, event in await stored()]
    # A refused batch may be partly stored (the sender retries it), but no accepted event is lost.
    assert set(accepted) <= set(kept), f"lost {sorted(set(accepted) - set(kept))}; the stream holds {kept}"


def _refused(recorded_metrics) -> float:
    """Events of source `web` ingestion told to come back, so far in this process."""
    return sum(
        p.value
        for p in recorded_metrics.points("mosaic.ingest.events")
        if p.attributes.get("mosaic.ingest.outcome") == "refused" and p.attributes.get("mosaic.source.id") == "web"
    )
