"""Sources over gRPC and HTTP: key rotation with a grace period, changes without a restart."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import grpc
from google.protobuf import duration_pb2

from ingestion_service.config import Settings
from ingestion_service.sources import CACHE_SIZE, SourceDirectory
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2


async def send(url: str, key: str, **message) -> int:
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{url}/v1/track", json={"userId": "ada", "event": "Clicked", **message}, headers={"Authorization": auth}
        ) as response:
            return response.status


async def test_a_rotated_key_works_until_its_grace_period_ends(ingestion, stub, create_source):
    old = await create_source("web")
    rotated = await stub.RotateWriteKey(
        pb.RotateWriteKeyRequest(source_id="web", grace_period=duration_pb2.Duration(seconds=1))
    )
    new = rotated.write_key.secret
    assert new.startswith("wk_") and new != old
    keys = {k.key_id: k for k in rotated.source.write_keys}
    assert keys[old[:10]].HasField("expires_at") and not keys[new[:10]].HasField("expires_at")
    assert await send(ingestion.http_url, old) == 200
    assert await send(ingestion.http_url, new) == 200
    await asyncio.sleep(1.2)
    assert await send(ingestion.http_url, old) == 401
    assert await send(ingestion.http_url, new) == 200


async def test_a_rotation_with_no_grace_revokes_the_old_key_at_once(ingestion, stub, create_source):
    old = await create_source("web")
    await stub.RotateWriteKey(pb.RotateWriteKeyRequest(source_id="web", grace_period=duration_pb2.Duration()))
    assert await send(ingestion.http_url, old) == 401


async def test_another_replica_sees_a_change_within_the_cache_lifetime(start_ingestion, create_source, stub):
    # Two replicas on one store (SQLite file) and one NATS: the second learns from the store.
    first = await start_ingestion(MOSAIC_INGEST_SOURCE_CACHE_SECONDS="0.5")
    second = await start_ingestion(MOSAIC_INGEST_SOURCE_CACHE_SECONDS="0.5")
    async with grpc.aio.insecure_channel(first.grpc_address) as channel:
        admin = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        created = await admin.CreateSource(pb.CreateSourceRequest(source=source_pb2.Source(source_id="shop")))
        key = created.source.write_keys[0].secret
        assert await send(second.http_url, key) == 200
        await admin.UpdateSource(
            pb.UpdateSourceRequest(
                source=source_pb2.Source(source_id="shop", disabled=True), update_mask={"paths": ["disabled"]}
            )
        )
        assert await send(first.http_url, key) == 403  # the replica that changed it: at once
        await asyncio.sleep(0.6)
        assert await send(second.http_url, key) == 403  # the other one: within its cache lifetime


async def test_a_new_tracking_plan_applies_to_the_next_event_without_a_restart(ingestion, stub, create_source):
    key = await create_source("web")
    assert await send(ingestion.http_url, key, messageId="before") == 200
    plan = source_pb2.TrackingPlan(unplanned=source_pb2.PLAN_ACTION_BLOCK)
    plan.events["Signed Up"].update({})
    await stub.UpdateSource(
        pb.UpdateSourceRequest(
            source=source_pb2.Source(source_id="web", tracking_plan=plan), update_mask={"paths": ["tracking_plan"]}
        )
    )
    answer = await stub.Ingest(
        pb.IngestRequest(
            source_id="web", events=[event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, user_id="ada", event="Clicked")]
        )
    )
    assert answer.results[0].status == pb.EVENT_STATUS_REJECTED
    assert (answer.results[0].field, answer.results[0].reason) == ("event", "'Clicked' is not in the tracking plan")


class _UnknownEverything:
    """A store that knows no key and no source, counting its reads (the cache is pure logic)."""

    def __init__(self) -> None:
        self.reads = 0

    async def key_owner(self, digest: str) -> None:
        self.reads += 1

    async def get_source(self, source_id: str) -> None:
        self.reads += 1


async def test_unknown_write_keys_and_source_ids_are_cached_within_a_bound():
    # Anyone can send made-up keys: remembering each one for ever would be a memory leak.
    store = _UnknownEverything()
    directory = SourceDirectory(store, Settings.from_env({"MOSAIC_AUTH": "off"}))
    for n in range(CACHE_SIZE + 500):
        assert await directory.by_write_key(f"wk_made-up-{n}") is None
        assert await directory.by_id(f"made-up-{n}") is None
    assert len(directory._by_key) == CACHE_SIZE and len(directory._by_id) == CACHE_SIZE
    reads = store.reads
    assert await directory.by_write_key(f"wk_made-up-{CACHE_SIZE + 499}") is None  # recent: cached
    assert store.reads == reads
    assert await directory.by_write_key("wk_made-up-0") is None  # evicted: read again
    assert store.reads == reads + 1
