"""The profile service in-process: errors with details, health through a graceful stop."""

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from mosaic.platform.server import Service
from mosaic.profile.v1 import profile_service_pb2 as pb, profile_service_pb2_grpc
from profile_service.app import build
from profile_service.config import Settings


@pytest.fixture
async def service(make_settings):
    settings = Settings(make_settings("profile", MOSAIC_GRACE_SECONDS="1"))
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


async def test_an_unknown_profile_is_not_found_with_the_resource_named(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetProfile(pb.GetProfileRequest(profile_id="nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ResourceInfo()
    rpc_status.from_call(caught.value).details[0].Unpack(info)
    assert (info.resource_type, info.resource_name) == ("profile", "nobody")


async def test_a_bad_page_token_names_the_field(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListSnapshots(pb.ListSnapshotsRequest(profile_id="p", page_token="forged"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "page_token: is not a token this service issued"


async def test_health_is_serving_then_not_serving_during_a_graceful_stop(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "mosaic.profile.v1.ProfileService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(service.stop())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
