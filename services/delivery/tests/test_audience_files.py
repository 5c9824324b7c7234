"""Audience syncs to files: batches of adds and removes written to real files, atomically, one
file a batch, end to end from membership changes on a real nats-server."""

import csv
import json
from datetime import datetime, timezone

import grpc
import pytest

from delivery_service.audience_files import AudienceFiles
from delivery_service.webhook import Retryable
from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.testing.plugin import eventually

Status = delivery_pb2.DeliveryStatus
CSV = delivery_pb2.AUDIENCE_FILE_FORMAT_CSV
JSONL = delivery_pb2.AUDIENCE_FILE_FORMAT_JSONL


def job(profile_id: str, exited: bool = False, text: str = "", second: int = 0) -> delivery_pb2.DeliveryJob:
    j = delivery_pb2.DeliveryJob(
        delivery_id=f"a:{profile_id}:{exited}", profile_id=profile_id, exited=exited, text=text
    )
    j.queued_at.FromDatetime(datetime(2025, 1, 6, 9, 0, second, tzinfo=timezone.utc))
    return j


async def test_a_batch_is_one_file_and_writing_it_again_replaces_it(tmp_path):
    files = AudienceFiles(tmp_path / "ads", JSONL)
    batch = [job("p-2", text="h2", second=1), job("p-1", text="h1", second=2), job("p-2", exited=True, second=3)]
    detail = await files.write(batch, "audience:0123456789abcdef0123")
    await files.write(batch, "audience:0123456789abcdef0123")  # a retry after a crash: same name
    [written] = list((tmp_path / "ads").iterdir())
    assert written.name == "20250106T090001000000Z-0123456789abcdef.jsonl" and written.name in detail
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert rows == [
        {"profile_id": "p-1", "action": "add", "data": "h1"},
        {"profile_id": "p-2", "action": "remove", "data": ""},  # the person's last change wins
    ]


async def test_a_folder_that_cannot_be_written_is_retryable(tmp_path):
    (tmp_path / "taken").write_text("a file where the folder should be")
    with pytest.raises(Retryable, match="audience file not written"):
        await AudienceFiles(tmp_path / "taken" / "ads", CSV).write([job("p-1")], "audience:ff")
    with pytest.raises(Retryable, match="MOSAIC_DELIVERY_AUDIENCE_DIR"):
        await AudienceFiles(None, CSV).write([job("p-1")], "audience:ff")


@pytest.fixture
def audience_dir(delivery_env, tmp_path):
    folder = tmp_path / "audiences"
    delivery_env["MOSAIC_DELIVERY_AUDIENCE_DIR"] = str(folder)
    return folder


def audience_destination(**fields) -> delivery_pb2.Destination:
    return delivery_pb2.Destination(
        destination_id="ads",
        kind=delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC,
        segment_id="vip",
        purpose="advertising",
        audience=delivery_pb2.AudienceSettings(file_format=CSV, batch_size=5, linger_seconds=0.3),
        **fields,
    )


async def test_membership_changes_reach_the_folder_as_csv_files_one_a_batch(audience_dir, stub, membership, consent):
    await stub.CreateDestination(
        pb.CreateDestinationRequest(destination=audience_destination(body_template="{{ profile_id | sha256 }}"))
    )
    people = [f"p-{n}" for n in range(12)]
    for person in people:
        await consent(person, purpose="advertising")
    for person in people:
        await membership("vip", person)
    await membership("vip", "p-0", version=2, exited=True)

    def audience() -> set[str]:
        members: set[str] = set()
        for path in sorted((audience_dir / "ads").glob("*.csv")):  # names sort in batch order
            with path.open(newline="") as file:
                for row in csv.DictReader(file):
                    assert len(row["data"]) == 64  # the rendered template: a hash per person
                    members = members | {row["profile_id"]} if row["action"] == "add" else members - {row["profile_id"]}
        return members

    await eventually(lambda: (audience_dir / "ads").is_dir() and audience() == set(people) - {"p-0"})
    names = [p.name for p in (audience_dir / "ads").iterdir()]
    assert 1 < len(names) < 13 and not [n for n in names if n.startswith(".")]  # batched; no partial file left
    records = (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id="p-3"))).deliveries
    assert records[0].status == Status.DELIVERY_STATUS_SENT and records[0].detail.startswith("file ")


@pytest.fixture
def blocked_dir(delivery_env, tmp_path):
    (tmp_path / "blocked").write_text("a file where the folder should be")
    delivery_env["MOSAIC_DELIVERY_AUDIENCE_DIR"] = str(tmp_path / "blocked")


async def test_a_folder_that_refuses_the_files_dead_letters_the_batch_after_its_retries(
    blocked_dir, stub, membership, consent
):
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=audience_destination()))
    await consent("p-1", purpose="advertising")
    await membership("vip", "p-1")
    [letter] = await eventually(lambda: _letters(stub))
    assert "audience file not written" in letter.last_error and letter.delivery.attempts == 3


async def _letters(stub):
    return list((await stub.ListDeadLetters(pb.ListDeadLettersRequest())).dead_letters)


async def test_an_audience_sync_to_files_is_refused_where_no_folder_is_configured(stub):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateDestination(pb.CreateDestinationRequest(destination=audience_destination()))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "MOSAIC_DELIVERY_AUDIENCE_DIR" in refused.value.details()
