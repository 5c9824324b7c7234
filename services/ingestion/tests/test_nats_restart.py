"""Nothing lost, nothing doubled: nats-server is killed and started again (same port, same
store) in the middle of a load, and afterwards
every acknowledged event is in the stream exactly once.

Senders behave as SDKs do: a batch that is not acknowledged (UNAVAILABLE, 503, a timeout)
is sent again with the same message ids until it is.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import time

import aiohttp
import grpc

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc

BATCHES_PER_SENDER = 40
BATCH = 50
ACKED = (pb.EVENT_STATUS_ACCEPTED, pb.EVENT_STATUS_DUPLICATE)


async def grpc_sender(address: str, name: str, acked: set[str], retries: collections.Counter) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        for batch in range(BATCHES_PER_SENDER):
            ids = [f"{name}-{batch}-{i}" for i in range(BATCH)]
            events = [
                event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id=m, user_id=f"u{i}", event="Load")
                for i, m in enumerate(ids)
            ]
            while True:
                try:
                    answer = await stub.Ingest(pb.IngestRequest(source_id="load", events=events), timeout=10)
                except grpc.aio.AioRpcError as error:
                    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), error
                    retries[name] += 1
                    await asyncio.sleep(0.2)
                    continue
                assert all(r.status in ACKED for r in answer.results)
                acked.update(ids)
                break


async def http_sender(url: str, key: str, name: str, acked: set[str], retries: collections.Counter) -> None:
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    async with aiohttp.ClientSession(
        headers={"Authorization": auth}, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        for batch in range(BATCHES_PER_SENDER):
            ids = [f"{name}-{batch}-{i}" for i in range(BATCH)]
            body = {
                "batch": [
                    {"type": "track", "messageId": m, "userId": f"u{i}", "event": "Load"} for i, m in enumerate(ids)
                ]
            }
            while True:
                try:
                    async with session.post(f"{url}/v1/batch", json=body) as response:
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                if status == 200:
                    acked.update(ids)
                    break
                assert status in (0, 503), status
                retries[name] += 1
                await asyncio.sleep(0.2)


async def test_after_a_nats_restart_mid_load_every_acked_event_is_stored_exactly_once(
    ingestion, create_source, stored, nats_server
):
    key = await create_source("load")
    acked: set[str] = set()
    retries: collections.Counter = collections.Counter()
    senders = [
        asyncio.create_task(grpc_sender(ingestion.grpc_address, "grpc-a", acked, retries)),
        asyncio.create_task(grpc_sender(ingestion.grpc_address, "grpc-b", acked, retries)),
        asyncio.create_task(http_sender(ingestion.http_url, key, "http-a", acked, retries)),
        asyncio.create_task(http_sender(ingestion.http_url, key, "http-b", acked, retries)),
    ]
    deadline = time.monotonic() + 5
    while len(acked) < BATCH * 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # let the load build up
    acked_before = len(acked)
    nats_server.kill()  # abruptly: publishes in flight get no answer
    await asyncio.sleep(0.5)
    await asyncio.to_thread(nats_server.start)
    await asyncio.wait_for(asyncio.gather(*senders), timeout=120)
    assert 0 < acked_before < 4 * BATCHES_PER_SENDER * BATCH, "the restart came in the middle of the load"
    print(f"acked before the restart: {acked_before}; retries: {dict(retries)}")
    stored_ids = collections.Counter(msg_id for msg_id, _ in await stored())
    assert len(acked) == 4 * BATCHES_PER_SENDER * BATCH
    assert {f"load:{m}" for m in acked} == set(stored_ids)
    assert [m for m, n in stored_ids.items() if n > 1] == []
