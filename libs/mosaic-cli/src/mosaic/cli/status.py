"""`mosaic status`: is every service serving, how far behind is each stage, what was given up on.

Health is each service's grpc.health.v1 answer; lag, in flight and redeliveries per stage come
from JetStream's consumer info (the durables `<stage>-<partition>`), which replica holds each
partition from the services' lease buckets (mosaic.platform.ownership), dead letters from the
DEAD_LETTERS stream, quarantine counts from ingestion's ListQuarantinedEvents, per source. It
exits 1 (exits.REFUSED) when a service is not serving or a running service leaves a partition
without a holder, so a script can wait on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
from dataclasses import dataclass, field

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from mosaic.cli import connect, exits, paging
from mosaic.cli.mesh import DEFAULT_PORTS, SERVICES
from mosaic.ingestion.v1 import ingestion_service_pb2 as ingestion
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc
from mosaic.platform.consumer_lag import DurableState, read_dead_letters, read_durables
from mosaic.platform.ownership import read_owners

COMMANDS = ("status",)
# Counting a quarantine pages through it; past this many events the count says "at least".
QUARANTINE_COUNT_LIMIT = 10_000


@dataclass
class Status:
    """What `mosaic status` found."""

    health: dict[str, str] = field(default_factory=dict)
    durables: list[DurableState] = field(default_factory=list)
    owners: dict[str, dict[int, str]] = field(default_factory=dict)  # service -> partition -> replica
    dead_letters: dict[str, int] = field(default_factory=dict)
    quarantine: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def serving(self) -> bool:
        return bool(self.health) and all(state == "SERVING" for state in self.health.values())


def add_commands(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="health of every service, consumer lag, dead letters, quarantine")
    status.add_argument(
        "--nats",
        default=os.environ.get("MOSAIC_NATS_URL", "nats://127.0.0.1:4222"),
        help="the NATS server (default: MOSAIC_NATS_URL or the local one)",
    )
    status.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("MOSAIC_PARTITIONS", "8")),
        help="the deployment's MOSAIC_PARTITIONS (default: that variable, or 8)",
    )
    status.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT",
        help="where a service listens (repeatable; default: the ports of `mosaic run`)",
    )


def addresses(overrides: list[str]) -> dict[str, str]:
    found = {name: f"127.0.0.1:{DEFAULT_PORTS[name]}" for name in SERVICES}
    for override in overrides:
        name, _, address = override.partition("=")
        if name not in found or not address:
            raise exits.UsageError(
                f"--address {override!r}: must be SERVICE=HOST:PORT with SERVICE one of {', '.join(SERVICES)}"
            )
        found[name] = address
    return found


async def _health(address: str) -> str:
    async with connect.channel(address) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError as error:
            return (
                "UNREACHABLE"
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                else error.code().name
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


async def _quarantine(address: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with connect.channel(address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        sources = [
            s async for s in paging.every(stub.ListSources, ingestion.ListSourcesRequest(), "sources", timeout=5)
        ]
        for source in (source.source_id for source in sources):
            count, token = 0, ""
            while count < QUARANTINE_COUNT_LIMIT:
                page = await stub.ListQuarantinedEvents(
                    ingestion.ListQuarantinedEventsRequest(source_id=source, page_size=500, page_token=token), timeout=5
                )
                count += len(page.events)
                if not (token := page.next_page_token):
                    break
            counts[source] = count
    return counts


async def _quiet(error: Exception) -> None:
    """nats-py reports every failed attempt here; the status says it once, in its report."""


async def gather(nats_url: str, where: dict[str, str], partitions: int = 8) -> Status:
    status = Status()
    answers = await asyncio.gather(*(_health(address) for address in where.values()))
    status.health = dict(zip(where, answers, strict=False))
    try:
        # nats-py retries a refused first connect on its own; the deadline is ours.
        nc = await asyncio.wait_for(
            nats.connect(nats_url, connect_timeout=3, allow_reconnect=False, error_cb=_quiet), timeout=5
        )
    except Exception as error:  # noqa: BLE001 - said in the report, never a traceback
        status.problems.append(f"NATS at {nats_url} unreachable: {error!r}")
    else:
        try:
            js = nc.jetstream(timeout=5)
            status.durables = await read_durables(js)
            status.dead_letters = await read_dead_letters(js)
            for name in where:
                owners = await read_owners(js, name)
                if owners is None:
                    continue  # it never ran against this NATS
                status.owners[name] = owners
                unheld = sorted(set(range(partitions)) - set(owners))
                if unheld and status.health.get(name) == "SERVING":
                    status.problems.append(f"{name}: no replica holds partitions {unheld}")
        finally:
            await nc.close()
    if status.health.get("ingestion") == "SERVING":
        try:
            status.quarantine = await _quarantine(where["ingestion"])
        except grpc.aio.AioRpcError as error:
            status.problems.append(f"quarantine not read: {error.code().name} {error.details()}")
    return status


def render(status: Status, where: dict[str, str], console: Console) -> None:
    services = Table(title="Services", title_justify="left")
    for column in ("service", "address", "health"):
        services.add_column(column)
    for name, state in status.health.items():
        colour = "green" if state == "SERVING" else "red"
        services.add_row(name, where[name], f"[{colour}]{state}[/{colour}]")
    console.print(services)

    stages = Table(title="Consumers (JetStream)", title_justify="left")
    for column in ("stage", "topic", "parts", "lag", "in flight", "redelivered", "worst @p", "dead letters"):
        stages.add_column(column, justify="left" if column in ("stage", "topic") else "right")
    grouped: dict[tuple[str, str], list[DurableState]] = {}
    for durable in status.durables:
        grouped.setdefault((durable.stage, durable.topic), []).append(durable)
    shown: set[str] = set()  # a stage's dead letters on its first row only
    for (stage, topic), states in grouped.items():
        worst = max(states, key=lambda s: s.pending)
        dead = "" if stage in shown else f"{status.dead_letters.get(stage, 0):,}"
        shown.add(stage)
        stages.add_row(
            stage,
            topic,
            str(len(states)),
            f"{sum(s.pending for s in states):,}",
            f"{sum(s.in_flight for s in states):,}",
            f"{sum(s.redelivered for s in states):,}",
            f"{worst.pending:,} @{worst.partition}",
            dead,
        )
    for stage in sorted(set(status.dead_letters) - shown):
        stages.add_row(stage, "", "", "", "", "", "", f"{status.dead_letters[stage]:,}")
    console.print(stages)

    if status.owners:
        leases = Table(title="Partitions (leases)", title_justify="left")
        for column in ("service", "replica", "partitions"):
            leases.add_column(column)
        for name, owners in status.owners.items():
            by_replica: dict[str, list[int]] = {}
            for partition, replica in sorted(owners.items()):
                by_replica.setdefault(replica, []).append(partition)
            for replica, held in sorted(by_replica.items()):
                leases.add_row(name, replica, ",".join(map(str, held)))
        console.print(leases)

    if status.quarantine:
        quarantine = Table(title="Quarantine (ingestion)", title_justify="left")
        quarantine.add_column("source")
        quarantine.add_column("events", justify="right")
        for source, count in sorted(status.quarantine.items()):
            events = f"{count:,}+" if count >= QUARANTINE_COUNT_LIMIT else f"{count:,}"
            quarantine.add_row(source, events)
        console.print(quarantine)
    for problem in status.problems:
        console.print(f"[yellow]{problem}[/yellow]")


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    where = addresses(args.address)
    status = asyncio.run(gather(args.nats, where, args.partitions))
    # A pipe gets 120 columns rather than rich's 80, so the tables stay whole in a log.
    render(status, where, console or Console(width=shutil.get_terminal_size((120, 24)).columns))
    return exits.OK if status.serving and not status.problems else exits.REFUSED
