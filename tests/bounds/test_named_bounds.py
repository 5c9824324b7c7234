"""The bounds the walk found missing, each with the answer it now gets (issue 13's examples)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mosaic.archive.v1 import event_archive_service_pb2 as archive
from mosaic.archive.v1 import event_archive_service_pb2_grpc
from mosaic.identity.v1 import identity_pb2, identity_service_pb2_grpc
from mosaic.identity.v1 import identity_service_pb2 as ids
from mosaic.ingestion.v1 import ingestion_service_pb2 as ing
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc
from mosaic.profile.v1 import profile_service_pb2 as prof
from mosaic.profile.v1 import profile_service_pb2_grpc


async def refusal(call) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    fields: list[str] = []
    for detail in rpc_status.from_call(caught.value).details if rpc_status.from_call(caught.value) else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields.extend(v.field for v in bad.field_violations)
    return caught.value.code(), caught.value.details(), fields


@pytest.fixture
async def mesh(start_services):
    return await start_services("ingestion", "identity", "profile")


async def test_identity_bounds_resolve_and_ids_and_never_echoes_a_huge_one(mesh):
    async with grpc.aio.insecure_channel(mesh.address("identity")) as channel:
        stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        many = [identity_pb2.Identifier(type="user_id", value=f"u{n}") for n in range(1001)]
        assert await refusal(stub.Resolve(ids.ResolveRequest(identifiers=many))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "identifiers: must hold at most 1000 identifiers, holds 1001",
            ["identifiers"],
        )
        huge = identity_pb2.Identifier(type="user_id", value="u" * 1_000_000)
        code, message, fields = await refusal(stub.Lookup(ids.LookupRequest(identifier=huge)))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["identifier.value"]) and len(message) < 200
        code, message, _ = await refusal(stub.GetIdentities(ids.GetIdentitiesRequest(profile_id="p" * 500)))
        assert code == grpc.StatusCode.NOT_FOUND and "(500 characters)" in message and len(message) < 300
        code, _, fields = await refusal(
            stub.Lookup(ids.LookupRequest(identifier=identity_pb2.Identifier(type="user_id\n", value="a")))
        )
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["identifier.type"])


async def test_profile_bounds_versions_tokens_and_times(mesh):
    async with grpc.aio.insecure_channel(mesh.address("profile")) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        code, _, fields = await refusal(stub.GetProfile(prof.GetProfileRequest(profile_id="p" * 1_000_000)))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["profile_id"])  # was RESOURCE_EXHAUSTED
        code, _, _ = await refusal(
            stub.DiffSnapshots(prof.DiffSnapshotsRequest(profile_id="p", from_version=1, to_version=2**62))
        )
        assert code == grpc.StatusCode.NOT_FOUND  # was a full core until the client gave up
        code, _, fields = await refusal(
            stub.ListSnapshots(prof.ListSnapshotsRequest(profile_id="p", page_token=str(2**63)))
        )
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])  # was INTERNAL
        far = timestamp_pb2.Timestamp(seconds=253402300800)  # year 10000
        code, _, fields = await refusal(stub.GetProfileAt(prof.GetProfileAtRequest(profile_id="p", at=far)))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["at"])  # was INTERNAL
        events = event_archive_service_pb2_grpc.EventArchiveServiceStub(channel)
        code, _, fields = await refusal(events.ListEvents(archive.ListEventsRequest(profile_id="p", until=far)))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["until"])
        centuries = archive.ListEventsRequest(profile_id="p", since=timestamp_pb2.Timestamp(seconds=-2208988800))
        answer = await events.ListEvents(centuries, timeout=10)  # 1900 to now: one bounded slice, then a token
        assert list(answer.events) == [] and answer.next_page_token


async def test_ingestion_bounds_the_grace_period_of_a_rotation(mesh):
    async with grpc.aio.insecure_channel(mesh.address("ingestion")) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        request = ing.RotateWriteKeyRequest(source_id="web")
        request.grace_period.seconds = 2**62
        code, message, fields = await refusal(stub.RotateWriteKey(request))
        assert (code, fields, message) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            ["grace_period"],
            "grace_period: must be between 0 and 90 days",
        )  # was INTERNAL
