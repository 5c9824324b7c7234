"""The `mosaic` commands of ingestion, against the service in-process: import (NDJSON, CSV,
resume without duplicates, the report of rejected rows), sources and quarantine."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
from collections import Counter

import aiohttp
import nats
from nats.js import api

from mosaic.cli import ingest_commands
from mosaic.cli.__main__ import main
from mosaic.events.v1 import event_pb2
from mosaic.platform import topics
from mosaic.platform.errors import Unavailable
from mosaic.testing.plugin import eventually


def import_args(path, address: str, **extra) -> argparse.Namespace:
    values = {
        "file": path,
        "source": "files",
        "format": None,
        "map": [],
        "type": "track",
        "batch": 100,
        "address": address,
        **extra,
    }
    return argparse.Namespace(command="import", **values)


def write_ndjson(path, rows: int, bad_every: int = 0) -> None:
    with path.open("w") as handle:
        for i in range(rows):
            if bad_every and i % bad_every == 0:
                handle.write('{"userId": "u", "type": "track"}\n' if (i // bad_every) % 2 else "{not json\n")
            else:
                handle.write(json.dumps({"userId": f"u{i % 50}", "event": "Row", "properties": {"i": i}}) + "\n")


async def test_an_ndjson_file_is_imported_with_a_report_of_the_rejected_rows(ingestion, stored, tmp_path, monkeypatch):
    path = tmp_path / "events.ndjson"
    write_ndjson(path, 1000, bad_every=100)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: the progress stream is a terminal
    progress = io.StringIO()
    assert await ingest_commands.import_file(import_args(path, ingestion.grpc_address), progress) == 0
    events = await stored()
    assert len(events) == 990 and len({m for m, _ in events}) == 990
    lines = (tmp_path / "events.ndjson.rejected.ndjson").read_text().splitlines()
    report = sorted((json.loads(line) for line in lines), key=lambda r: r["row"])  # written as batches end
    assert [r["row"] for r in report] == [i + 1 for i in range(0, 1000, 100)]
    assert report[0]["reason"].startswith("line is not JSON")
    assert report[1] == {"row": 101, "status": "rejected", "field": "event", "reason": "is required for track"}
    assert "100%" in progress.getvalue() and "1,000 rows" in progress.getvalue()
    assert "ev/s" in progress.getvalue() and "ETA" in progress.getvalue()


async def test_a_csv_file_is_imported_through_a_column_mapping(ingestion, stored, tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text("user,mail,plan,since\nada,ada@example.com,pro,2024-01-02T00:00:00Z\ngrace,,team,\n")
    args = import_args(
        path, ingestion.grpc_address, type="identify", map=["user=userId", "mail=traits.email", "since=timestamp"]
    )
    progress = io.StringIO()  # not a terminal: no progress bar
    assert await ingest_commands.import_file(args, progress) == 0
    assert progress.getvalue() == ""
    by_user = {event.user_id: event for _, event in await stored()}
    assert by_user["ada"].traits["email"] == "ada@example.com" and by_user["ada"].traits["plan"] == "pro"
    assert by_user["ada"].timestamp.ToJsonString() == "2024-01-02T00:00:00Z"
    assert "email" not in by_user["grace"].traits and by_user["grace"].traits["plan"] == "team"


async def test_an_interrupted_import_resumes_without_duplicates(ingestion, stored, tmp_path):
    path = tmp_path / "big.ndjson"
    write_ndjson(path, 6000)
    first = asyncio.create_task(ingest_commands.import_file(import_args(path, ingestion.grpc_address), io.StringIO()))
    js = ingestion.service.runtime.bus._js
    await eventually(lambda: _count_at_least(js, 1500), timeout=30)
    first.cancel()  # as Ctrl-C or a crash would stop it
    await asyncio.gather(first, return_exceptions=True)
    state = json.loads((tmp_path / "big.ndjson.import-state.json").read_text())
    assert 0 < state["rows_done"] < 6000
    assert await ingest_commands.import_file(import_args(path, ingestion.grpc_address), io.StringIO()) == 0
    counts = Counter(int(event.properties["i"]) for _, event in await stored())
    assert sorted(counts) == list(range(6000)) and set(counts.values()) == {1}


async def _count_at_least(js, n: int) -> bool:
    return (await js.stream_info("EVENTS_RAW")).state.messages >= n


async def test_sources_and_quarantine_are_managed_from_the_command_line(ingestion, tmp_path, capsys):
    address = ["--address", ingestion.grpc_address]
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {"events": {"Bought": {"type": "object", "required": ["price"]}}, "invalid": "PLAN_ACTION_QUARANTINE"}
        )
    )
    run = lambda *argv: asyncio.to_thread(main, [*argv, *address])
    assert await run("sources", "create", "shop", "--name", "Shop", "--plan", str(plan)) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["name"] == "Shop" and created["writeKeys"][0]["secret"].startswith("wk_")
    assert await run("sources", "rotate-key", "shop", "--grace", "60") == 0
    assert len(json.loads(capsys.readouterr().out)["source"]["writeKeys"]) == 2
    events = tmp_path / "bad.ndjson"
    events.write_text(json.dumps({"messageId": "q1", "userId": "ada", "event": "Bought"}) + "\n")
    assert await run("import", str(events), "--source", "shop") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["quarantined"] == 1
    assert await run("quarantine", "list", "--source", "shop") == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "'price' is a required property"
    fixed = tmp_path / "fixed.json"
    fixed.write_text(
        json.dumps({"type": "EVENT_TYPE_TRACK", "userId": "ada", "event": "Bought", "properties": {"price": 3}})
    )
    assert await run("quarantine", "replay", "q1", "--source", "shop", "--event", str(fixed)) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "EVENT_STATUS_ACCEPTED"
    assert await run("sources", "update", "shop", "--disable") == 0
    assert json.loads(capsys.readouterr().out)["disabled"] is True
    assert await run("quarantine", "show", "q1", "--source", "shop") == 1
    assert "NOT_FOUND" in capsys.readouterr().err


async def test_a_segment_message_gives_the_same_event_through_the_cli_and_the_http_api(
    ingestion, create_source, stored, tmp_path
):
    """One mapping for both doors: originalTimestamp, category, channel and context.traits too."""
    messages = [
        {
            "type": "page",
            "messageId": "m-page",
            "anonymousId": 42,
            "name": "Pricing",
            "category": "Docs",
            "channel": "web",
            "originalTimestamp": "2024-03-01T10:00:00.250+01:00",
            "sentAt": "2024-03-01T09:00:01Z",
            "properties": {"path": "/pricing", "nested": {"a": [1, "two", None]}},
            "context": {"ip": "203.0.113.7", "locale": "fr-FR"},
            "integrations": {"All": False},
        },
        {
            "type": "identify",
            "messageId": "m-identify",
            "userId": "ada",
            "context": {"traits": {"email": "ada@example.com", "plan": "pro"}},
            "timestamp": "2024-03-02T00:00:00Z",
        },
    ]
    path = tmp_path / "both.ndjson"
    path.write_text("".join(json.dumps(m) + "\n" for m in messages))
    assert await ingest_commands.import_file(import_args(path, ingestion.grpc_address, source="files")) == 0
    key = await create_source("web")
    async with aiohttp.ClientSession(base_url=ingestion.http_url) as session:
        auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
        async with session.post("/v1/batch", json={"batch": messages}, headers=auth) as response:
            assert response.status == 200, await response.text()

    by_source: dict[str, dict[str, event_pb2.Event]] = {}
    for _, event in await eventually(lambda: _at_least(stored, 4), timeout=30):
        by_source.setdefault(event.source_id, {})[event.message_id] = event
    assert sorted(by_source) == ["files", "web"]
    for message_id in ("m-page", "m-identify"):
        cli, http = event_pb2.Event(), event_pb2.Event()
        cli.CopyFrom(by_source["files"][message_id])
        http.CopyFrom(by_source["web"][message_id])
        for event in (cli, http):  # where and when it came in, not what it says
            if event.HasField("sent_at"):  # the time is corrected by (received_at - sentAt)
                event.timestamp.FromNanoseconds(event.timestamp.ToNanoseconds() - event.received_at.ToNanoseconds())
            event.ClearField("source_id")
            event.ClearField("received_at")
        assert cli == http
    page = by_source["files"]["m-page"]
    assert page.properties["category"] == "Docs" and page.context["channel"] == "web"
    assert page.original_timestamp.ToJsonString() == "2024-03-01T09:00:00.250Z" and page.anonymous_id == "42"
    assert by_source["files"]["m-identify"].traits["email"] == "ada@example.com"


async def _at_least(stored, count: int):
    events = await stored()
    return events if len(events) >= count else None


async def test_an_import_told_to_come_back_later_retries_until_it_lands(start_ingestion, nats_server, stored, tmp_path):
    ingestion = await start_ingestion(
        MOSAIC_INGEST_MAX_BACKLOG="3",
        MOSAIC_INGEST_BACKLOG_REFRESH_SECONDS="0.1",
        MOSAIC_INGEST_BACKLOG_RETRY_AFTER_SECONDS="0.2",
    )
    nc = await nats.connect(nats_server.url)
    slow = await nc.jetstream().pull_subscribe(  # a consuming service that stopped acking
        topics.EVENTS_RAW.wildcard,
        durable="identity-0",
        stream=topics.EVENTS_RAW.stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT),
    )
    first = tmp_path / "first.ndjson"
    write_ndjson(first, 10)
    assert await ingest_commands.import_file(import_args(first, ingestion.grpc_address), io.StringIO()) == 0
    gauge = ingestion.parts.intake.backlog
    await eventually(lambda: gauge.backlog > gauge.limit)
    refusals = []
    check = gauge.check

    def counted() -> None:  # the real check, counted
        try:
            check()
        except Unavailable:
            refusals.append(1)
            raise

    gauge.check = counted
    second = tmp_path / "second.ndjson"
    second.write_text("".join(json.dumps({"userId": f"late{i}", "event": "Row"}) + "\n" for i in range(5)))
    task = asyncio.create_task(ingest_commands.import_file(import_args(second, ingestion.grpc_address), io.StringIO()))
    await eventually(lambda: len(refusals) >= 2, timeout=30)  # refused, waited as told, refused again
    assert not task.done()
    for message in await slow.fetch(100, timeout=5):  # the consumer catches up
        await message.ack()
    assert await asyncio.wait_for(task, 60) == 0
    assert {e.user_id for _, e in await stored()} >= {f"late{i}" for i in range(5)}
    await nc.close()
