"""`mosaic import`, `mosaic sources` and `mosaic quarantine`: the ingestion service's commands.

`mosaic import FILE --source ID` loads an NDJSON or CSV file of Segment messages through
IngestionService.Ingest, a few batches in flight at once. It is safe to interrupt: after each
acknowledged stretch of rows it writes `FILE.import-state.json`, and a second run with the
same file and source starts there. Rows without a messageId get one derived from the file's
SHA-256 and the row number, so the rows sent again after an interruption are duplicates
that ingestion drops, never new events. Rows that were rejected (or quarantined) are written
with the reason to `FILE.rejected.ndjson`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import json
import math
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Iterator

import grpc
import tenacity
from google.protobuf import duration_pb2, json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich import progress
from rich.console import Console
from rich.text import Text

from mosaic.cli import connect, exits, listing, paging
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import retry, segment_json
from mosaic.platform.errors import InvalidArgument

COMMANDS = ("import", "sources", "quarantine")
DEFAULT_ADDRESS = "127.0.0.1:50051"
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)
NAMESPACE = uuid.UUID("7b6f1b4e-5f0a-4e4b-9a51-6d6f73616963")


def _mapping(text: str) -> str:
    if "=" not in text.strip("="):
        raise argparse.ArgumentTypeError(f"{text!r} is not COLUMN=PATH")
    return text


def add_commands(commands: argparse._SubParsersAction) -> None:
    load = commands.add_parser(
        "import",
        help="load an NDJSON or CSV file of events into a source",
        description="On a terminal a progress bar on stderr (rate, time left); the summary on stdout, JSON.",
    )
    load.add_argument("file", type=Path)
    load.add_argument("--source", required=True, help="the source id the events come from")
    load.add_argument("--format", choices=("ndjson", "csv"), help="default: from the file name")
    load.add_argument(
        "--map",
        action="append",
        default=[],
        type=_mapping,
        metavar="COLUMN=PATH",
        help="CSV: where a column goes, e.g. mail=traits.email (repeatable)",
    )
    load.add_argument("--type", default="track", help="the type of rows that name none (default: track)")
    load.add_argument("--batch", type=int, default=500, help="events per call (at most 2,500)")
    load.add_argument("--address", default=DEFAULT_ADDRESS, help="the ingestion service")

    sources = commands.add_parser("sources", help="create, list, show, update sources; rotate write keys")
    actions = sources.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a source; prints it with its first write key")
    update = actions.add_parser("update", help="change what the flags name, nothing else")
    for parser in (create, update):
        parser.add_argument("source_id", metavar="SOURCE_ID")
        parser.add_argument("--name", help="what people call it")
        parser.add_argument("--plan", type=Path, help="tracking plan, JSON (TrackingPlan); '-' for none")
        parser.add_argument("--transforms", type=Path, help="transforms, a JSON array of Transform")
        parser.add_argument("--rate", type=float, help="events per second (0: no limit)")
        parser.add_argument("--burst", type=int, default=0, help="with --rate: how many may come at once")
    create.add_argument("--disable", action="store_true", help="create it refusing events")
    create.set_defaults(enable=False)
    switch = update.add_mutually_exclusive_group()
    switch.add_argument("--disable", action="store_true", help="refuse its events from now on")
    switch.add_argument("--enable", action="store_true", help="take its events again")
    actions.add_parser("list", help="every source", description=listing.HELP)
    actions.add_parser("show", help="one source").add_argument("source_id", metavar="SOURCE_ID")
    rotate = actions.add_parser("rotate-key", help="a new write key; the old ones stay valid for --grace")
    rotate.add_argument("source_id", metavar="SOURCE_ID")
    rotate.add_argument("--grace", type=float, help="seconds the old keys stay valid")
    for parser in actions.choices.values():
        parser.add_argument("--address", default=DEFAULT_ADDRESS, help="the ingestion service")

    quarantine = commands.add_parser("quarantine", help="list, show, replay or discard quarantined events")
    actions = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="the source's quarantined events", description=listing.HELP).set_defaults(
        message_ids=[], all=False
    )
    show = actions.add_parser("show", help="quarantined events, whole")
    show.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID")
    show.set_defaults(all=False)
    replay = actions.add_parser("replay", help="send quarantined events through the plan again (or a fixed copy)")
    discard = actions.add_parser("discard", help="drop quarantined events for good")
    for parser in (replay, discard):
        parser.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
        parser.add_argument("--all", action="store_true", help=f"{parser.prog.split()[-1]} every quarantined event")
    replay.add_argument("--event", type=Path, help="a fixed copy of the event, JSON")
    for parser in actions.choices.values():
        parser.add_argument("--source", required=True, help="the source whose quarantine it is")
        parser.add_argument("--address", default=DEFAULT_ADDRESS, help="the ingestion service")


def run(args: argparse.Namespace) -> int:
    commands: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]]
    commands = {"import": import_file, "sources": manage_sources, "quarantine": manage_quarantine}
    try:
        return asyncio.run(commands[args.command](args))
    except KeyboardInterrupt:
        if args.command != "import":
            raise
        print("\ninterrupted; the same command resumes where it stopped", file=sys.stderr)
        return exits.INTERRUPTED


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message), indent=2))


SOURCE_COLUMNS = (
    listing.Column("source", "sourceId"),
    listing.Column("name", "name"),
    listing.Column("disabled", "disabled"),
    listing.Column("events/s", "rateLimit.eventsPerSecond", right=True),
    listing.Column("burst", "rateLimit.burst", right=True),
    listing.Column("write keys", "writeKeys", lambda keys: str(len(keys or ())), right=True),
)
QUARANTINE_COLUMNS = (
    listing.Column("message", "messageId"),
    listing.Column("field", "field"),
    listing.Column("reason", "reason"),
    listing.Column("quarantined at", "quarantinedAt"),
)


async def manage_sources(args: argparse.Namespace) -> int:
    async with connect.channel(args.address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        if args.action == "list":
            with listing.Listing(SOURCE_COLUMNS) as out:
                async for source in paging.every(stub.ListSources, pb.ListSourcesRequest(), "sources"):
                    out.add(json_format.MessageToDict(source))
        elif args.action == "show":
            _print((await stub.GetSource(pb.GetSourceRequest(source_id=args.source_id))).source)
        elif args.action == "rotate-key":
            grace = (
                None
                if args.grace is None
                else duration_pb2.Duration(seconds=int(args.grace), nanos=int(args.grace % 1 * 1e9))
            )
            _print(await stub.RotateWriteKey(pb.RotateWriteKeyRequest(source_id=args.source_id, grace_period=grace)))
        else:
            source, paths = _definition(args)
            if args.action == "create":
                _print((await stub.CreateSource(pb.CreateSourceRequest(source=source))).source)
            else:
                _print(
                    (
                        await stub.UpdateSource(pb.UpdateSourceRequest(source=source, update_mask={"paths": paths}))
                    ).source
                )
    return 0


def _definition(args: argparse.Namespace) -> tuple[source_pb2.Source, list[str]]:
    """The source the flags describe, and the fields they name (the update mask)."""
    source = source_pb2.Source(source_id=args.source_id)
    paths: list[str] = []
    if args.name is not None:
        source.name, paths = args.name, [*paths, "name"]
    if args.disable or args.enable:
        source.disabled, paths = args.disable, [*paths, "disabled"]
    if args.plan is not None:
        if str(args.plan) != "-":
            with _file(args.plan) as text:
                json_format.Parse(text, source.tracking_plan)
        paths.append("tracking_plan")
    if args.transforms is not None:
        with _file(args.transforms) as text:
            for item in json.loads(text):
                json_format.ParseDict(item, source.transforms.add())
        paths.append("transforms")
    if args.rate is not None:
        source.rate_limit.CopyFrom(source_pb2.RateLimit(events_per_second=args.rate, burst=args.burst))
        paths.append("rate_limit")
    return source, paths


@contextlib.contextmanager
def _file(path: Path) -> Iterator[str]:
    """The file's text; a file that is not there, or not the JSON it should be, is a usage error."""
    try:
        yield path.read_text()
    except (OSError, ValueError, json_format.Error) as error:
        raise exits.UsageError(f"{path}: {error}") from None


async def manage_quarantine(args: argparse.Namespace) -> int:
    if args.action in ("replay", "discard") and not (args.message_ids or args.all):
        raise exits.UsageError(f"quarantine {args.action}: name message ids, or --all")
    fixed = None
    if args.action == "replay" and args.event:
        with _file(args.event) as text:
            fixed = json_format.Parse(text, event_pb2.Event())
    async with connect.channel(args.address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        ids = list(args.message_ids)
        if args.action == "list" or args.all:
            token, kept = "", []
            while True:
                page = await stub.ListQuarantinedEvents(
                    pb.ListQuarantinedEventsRequest(source_id=args.source, page_size=500, page_token=token)
                )
                kept.extend(page.events)
                token = page.next_page_token
                if not token:
                    break
            if args.action == "list":
                with listing.Listing(QUARANTINE_COLUMNS) as out:
                    for item in kept:
                        out.add(
                            {
                                "messageId": item.event.message_id,
                                "field": item.field,
                                "reason": item.reason,
                                "quarantinedAt": item.quarantined_at.ToJsonString(),
                            }
                        )
                return 0
            ids = [item.event.message_id for item in kept]
        for message_id in ids:
            if args.action == "show":
                _print(
                    (
                        await stub.GetQuarantinedEvent(
                            pb.GetQuarantinedEventRequest(source_id=args.source, message_id=message_id)
                        )
                    ).event
                )
            elif args.action == "discard":
                await stub.DiscardQuarantinedEvent(
                    pb.DiscardQuarantinedEventRequest(source_id=args.source, message_id=message_id)
                )
                print(json.dumps({"messageId": message_id, "status": "DISCARDED"}))
            else:
                answer = await stub.ReplayQuarantinedEvent(
                    pb.ReplayQuarantinedEventRequest(source_id=args.source, message_id=message_id, event=fixed)
                )
                print(json.dumps(json_format.MessageToDict(answer.result)))
    return 0


# -- import


def _rows(path: Path, kind: str, mapping: dict[str, str], default_type: str) -> Iterator[tuple[int, int, Any]]:
    """(row number from 1, bytes read so far, message or an error string) for every row."""
    with path.open("rb") as handle:
        if kind == "ndjson":
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as error:
                    message = f"line is not JSON: {error}"
                yield number, handle.tell(), message
            return
        reader = csv.DictReader((line.decode("utf-8", errors="replace") for line in handle))
        for number, row in enumerate(reader, 2):  # row 1 is the header
            yield number, handle.tell(), _from_csv(row, mapping, default_type)


def _from_csv(row: dict[str, str], mapping: dict[str, str], default_type: str) -> dict[str, Any]:
    kind = row.get(next((c for c, p in mapping.items() if p == "type"), "type")) or default_type
    nested = "traits" if kind in ("identify", "group") else "properties"
    message: dict[str, Any] = {}
    for column, value in row.items():
        if column is None or value in (None, ""):
            continue
        path = mapping.get(column) or (column if column in segment_json.TOP_LEVEL else f"{nested}.{column}")
        target, *rest = path.split(".")
        holder = message
        for part in [target, *rest][:-1]:
            holder = holder.setdefault(part, {})
        holder[path.split(".")[-1]] = value
    return message


def _event(message: Any, default_type: str, source: str, digest: str, number: int) -> event_pb2.Event:
    """A Segment message as an Event, by the mapping ingestion's HTTP API uses; a row without a
    `messageId` gets one derived from the file and row, so a second run is deduplicated.
    Raises InvalidArgument naming the field that is wrong."""
    if not isinstance(message, dict):
        raise InvalidArgument("", message if isinstance(message, str) else "row is not a JSON object")
    event = segment_json.to_event(message, None if message.get("type") else default_type)
    if not event.message_id:
        event.message_id = str(uuid.uuid5(NAMESPACE, f"{source}:{digest}:{number}"))
    return event


class _Rate(progress.ProgressColumn):
    """Events sent per second since the start (rich's own speed column counts the bytes)."""

    def render(self, task: progress.Task) -> Text:
        rate = task.fields["rows"] / task.elapsed if task.elapsed else 0.0
        return Text(f"{task.fields['rows']:>10,} rows {rate:>8,.0f} ev/s")


class Progress:
    """A progress bar on a terminal (nothing otherwise): the share of the file read, rows,
    events per second and the time left."""

    def __init__(self, total: int, stream=None) -> None:
        console = Console(file=stream, stderr=stream is None)
        self.bar: progress.Progress | None = None
        self.shown = 0.0
        if console.is_terminal:
            self.bar = progress.Progress(
                progress.BarColumn(),
                progress.TaskProgressColumn(),
                _Rate(),
                progress.TextColumn("ETA"),
                progress.TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task("import", total=max(total, 1), rows=0)
            self.bar.start()

    def show(self, done_bytes: int, rows: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.bar is None or (not final and now - self.shown < 0.1):
            return
        self.shown = now
        self.bar.update(self.task, completed=done_bytes, rows=rows, refresh=final)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


async def import_file(args: argparse.Namespace, progress_stream=None) -> int:
    """Load the file; a progress bar goes to `progress_stream` (stderr) when it is a terminal."""
    path: Path = args.file
    if not path.is_file():
        raise exits.UsageError(f"{path}: no such file")
    kind = args.format or ("csv" if path.suffix.lower() == ".csv" else "ndjson")
    mapping = dict(item.split("=", 1) for item in args.map)
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    state_path = path.with_name(path.name + ".import-state.json")
    report_path = path.with_name(path.name + ".rejected.ndjson")
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    resume_after = (
        state.get("rows_done", 0) if state.get("digest") == digest and state.get("source") == args.source else 0
    )
    counts: Counter[str] = Counter()
    bar = Progress(path.stat().st_size, progress_stream)
    pending: dict[int, asyncio.Task] = {}
    done_upto = resume_after  # every row up to this number is acknowledged

    def save(rows_done: int) -> None:
        state_path.write_text(json.dumps({"digest": digest, "source": args.source, "rows_done": rows_done}))

    _keep_report_upto(report_path, resume_after)  # rows after it are sent, and reported, again
    with report_path.open("a") as report:
        channel = connect.channel(args.address)
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)

        async def send(rows: list[tuple[int, event_pb2.Event]]) -> None:
            results = await _ingest(stub, args.source, [event for _, event in rows])
            for (number, _), result in zip(rows, results, strict=False):
                status = pb.EventStatus.Name(result.status).removeprefix("EVENT_STATUS_").lower()
                counts[status] += 1
                if result.status in (pb.EVENT_STATUS_REJECTED, pb.EVENT_STATUS_QUARANTINED):
                    field = re.sub(r"^events\[\d+\]\.", "", result.field)  # the row is the position
                    report.write(
                        json.dumps({"row": number, "status": status, "field": field, "reason": result.reason}) + "\n"
                    )

        async def settle(limit: int) -> None:
            nonlocal done_upto
            while len(pending) > limit:
                first = min(pending)
                await pending.pop(first)
                done_upto = max(done_upto, first)
                save(done_upto)

        batch: list[tuple[int, event_pb2.Event]] = []
        rows_seen = 0
        try:
            for number, read, message in _rows(path, kind, mapping, args.type):
                rows_seen += 1
                if number <= resume_after:
                    continue
                try:
                    batch.append((number, _event(message, args.type, args.source, digest, number)))
                except InvalidArgument as error:
                    counts["rejected"] += 1
                    report.write(
                        json.dumps({"row": number, "status": "rejected", "field": error.field, "reason": error.rule})
                        + "\n"
                    )
                if len(batch) >= args.batch:
                    pending[batch[-1][0]] = asyncio.create_task(send(batch))
                    batch = []
                    await settle(3)
                bar.show(read, sum(counts.values()))
            if batch:
                pending[batch[-1][0]] = asyncio.create_task(send(batch))
            await settle(0)
            save(number if rows_seen else 0)
            bar.show(path.stat().st_size, sum(counts.values()), final=True)
        finally:
            bar.close()
            for task in pending.values():
                task.cancel()
            await channel.close()
    summary = {name: counts[name] for name in ("accepted", "duplicate", "rejected", "quarantined", "suppressed")}
    print(json.dumps({**summary, "resumed_after_row": resume_after, "report": str(report_path)}))
    return 0


def _keep_report_upto(report_path: Path, row: int) -> None:
    kept = []
    if row and report_path.exists():
        kept = [line for line in report_path.read_text().splitlines() if json.loads(line)["row"] <= row]
    report_path.write_text("".join(line + "\n" for line in kept))


async def _ingest(stub, source: str, events: list[event_pb2.Event]) -> list[pb.EventResult]:
    """One batch, retried (20 times at most) while the service says to come back later, after
    the wait it asked for (RetryInfo) or else 0.4 s, 0.8 s ... 10 s."""
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, grpc.aio.AioRpcError) and e.code() in RETRYABLE),
        stop=tenacity.stop_after_attempt(21),
        wait=retry.wait(0.4, 10.0, hint=_retry_hint, hint_cap=math.inf),  # the service's wait, as asked
        reraise=True,
    )
    request = pb.IngestRequest(source_id=source, events=events)

    async def ingest() -> pb.IngestResponse:  # a coroutine: tenacity would not await a stub's call
        return await stub.Ingest(request, timeout=30)

    return list((await retrying(ingest)).results)


def _retry_hint(error: BaseException) -> float | None:
    """The wait the service asked for in its RetryInfo detail, if it gave one."""
    status = rpc_status.from_call(error) if isinstance(error, grpc.aio.AioRpcError) else None
    for detail in status.details if status else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None
