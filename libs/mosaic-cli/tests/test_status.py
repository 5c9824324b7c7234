"""`mosaic status` against a real ingestion process and a real nats-server: health per service,
lag per stage from JetStream's durables, the replica holding each partition, dead letters per
stage, quarantine per source."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import grpc
import nats
from google.protobuf import json_format
from nats.js import api
from rich.console import Console

from mosaic.cli import status
from mosaic.cli.exits import UsageError
from mosaic.cli.mesh import Mesh
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import topics

PLAN = {
    "events": {"Bought": {"type": "object", "required": ["price"]}},
    "unplanned": "PLAN_ACTION_QUARANTINE",
    "invalid": "PLAN_ACTION_QUARANTINE",
}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once the socket is closed


async def _quarantine_two(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        plan = json_format.ParseDict(PLAN, source_pb2.TrackingPlan())
        await stub.CreateSource(pb.CreateSourceRequest(source=source_pb2.Source(source_id="shop", tracking_plan=plan)))
        events = [
            event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id=f"q{i}", user_id="ada", event="Bought")
            for i in range(2)
        ]
        answer = await stub.Ingest(pb.IngestRequest(source_id="shop", events=events))
        assert [r.status for r in answer.results] == [pb.EVENT_STATUS_QUARANTINED] * 2


async def _lag_and_dead_letters(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    # ingestion declared the streams; identity is not running, so its durables only wait.
    for partition in (0, 1):
        await js.add_consumer(
            topics.EVENTS_RAW.stream,
            api.ConsumerConfig(
                durable_name=f"identity-{partition}", filter_subject=topics.EVENTS_RAW.partition_subjects(partition)
            ),
        )
    for _ in range(4):
        await js.publish(topics.EVENTS_RAW.subject(1, "ada"), b"x")
    for _ in range(3):
        await js.publish(f"deadletter.profile.{topics.EVENTS_RESOLVED.subject(0, 'p-ada')}", b"x")
    await nc.close()


async def test_status_shows_health_lag_owners_dead_letters_and_quarantine(nats_server, tmp_path: Path):
    env = {
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_DATA_DIR": str(tmp_path / "data"),
        "MOSAIC_AUTH": "off",
        "OTEL_TRACES_EXPORTER": "none",
    }
    mesh = Mesh(env, tmp_path / "logs")
    try:
        mesh.start_service("ingestion")
        await _quarantine_two(mesh.address("ingestion"))
        await _lag_and_dead_letters(nats_server.url)
        where = {name: f"127.0.0.1:{_closed_port()}" for name in status.SERVICES}
        where["ingestion"] = mesh.address("ingestion")
        found = await status.gather(nats_server.url, where)
    finally:
        mesh.stop()
    assert found.health["ingestion"] == "SERVING"
    assert found.health["identity"] == "UNREACHABLE" and not found.serving
    identity = {s.partition: s.pending for s in found.durables if s.stage == "identity"}
    assert identity == {0: 0, 1: 4}
    assert found.dead_letters == {"profile": 3}
    assert found.quarantine == {"shop": 2}
    (holder,) = set(found.owners["ingestion"].values())  # the one replica holds all eight
    assert sorted(found.owners["ingestion"]) == list(range(8)) and not found.problems

    out = io.StringIO()
    status.render(found, where, Console(file=out, width=140))
    text = out.getvalue()
    assert "SERVING" in text and "UNREACHABLE" in text
    assert "4 @1" in text  # identity's worst partition
    assert "shop" in text
    assert holder in text and "0,1,2,3,4,5,6,7" in text


async def test_status_without_nats_says_so_and_fails(tmp_path: Path):
    where = {name: f"127.0.0.1:{_closed_port()}" for name in status.SERVICES}
    found = await status.gather(f"nats://127.0.0.1:{_closed_port()}", where)
    assert found.problems and "unreachable" in found.problems[0]
    assert set(found.health.values()) == {"UNREACHABLE"}


def test_an_address_for_an_unknown_service_is_refused():
    try:
        status.addresses(["billing=127.0.0.1:1"])
    except UsageError as refused:
        assert "billing" in str(refused)
    else:
        raise AssertionError("accepted an unknown service")
    assert status.addresses(["profile=127.0.0.2:9"])["profile"] == "127.0.0.2:9"


def test_mosaic_status_exits_1_when_services_are_down(capsys):
    from mosaic.cli.__main__ import main

    addresses = [f"--address={name}=127.0.0.1:{_closed_port()}" for name in status.SERVICES]
    assert main(["status", f"--nats=nats://127.0.0.1:{_closed_port()}", *addresses]) == 1
    assert "UNREACHABLE" in capsys.readouterr().out
