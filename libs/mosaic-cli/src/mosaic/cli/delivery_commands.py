"""`mosaic destinations`, `mosaic campaigns` and `mosaic deliveries`: the delivery service's commands.

mosaic destinations create FILE.json     a Destination as JSON; prints it and its secret once
mosaic destinations list | show ID | delete ID
mosaic campaigns create FILE.json        a Campaign as JSON (cron schedule, segment, destination)
mosaic campaigns list | show ID | delete ID   with each one's last run and next tick
mosaic campaigns update ID FILE.json     change the fields FILE names (e.g. {"schedule": {"cron": "0 8 * * *"}})
mosaic campaigns pause ID | resume ID    stop its ticks; start them again from the next one
mosaic deliveries list --profile-id P
mosaic deliveries dead-letters [--destination ID]
mosaic deliveries show ID --destination D
mosaic deliveries replay|discard [IDS...] (--destination D | --all)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from google.protobuf import field_mask_pb2, json_format

from mosaic.cli import connect, exits, listing, paging
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2, delivery_service_pb2_grpc
from mosaic.delivery.v1 import delivery_service_pb2 as pb

COMMANDS = ("destinations", "campaigns", "deliveries")
DEFAULT_ADDRESS = "127.0.0.1:50056"


def add_commands(commands: argparse._SubParsersAction) -> None:
    for command, kind, text in (
        ("destinations", "Destination", "create, list, show or delete delivery destinations"),
        ("campaigns", "Campaign", "create, list, show, update, pause, resume or delete scheduled broadcasts"),
    ):
        parser = commands.add_parser(command, help=text)
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = actions.add_parser("create", help=f"create one from a JSON file ({kind})")
        create.add_argument("target", metavar="FILE", help=f"the {kind}, JSON")
        actions.add_parser("list", help=f"every {command[:-1]}", description=listing.HELP)
        actions.add_parser("show", help=f"one {command[:-1]}").add_argument("target", metavar="ID")
        actions.add_parser("delete", help=f"delete one {command[:-1]}").add_argument("target", metavar="ID")
        if command == "campaigns":
            update = actions.add_parser("update", help="change the fields a JSON file names (a partial Campaign)")
            update.add_argument("target", metavar="ID")
            update.add_argument(
                "file", metavar="FILE", help="the fields to change, JSON; a field given empty is cleared"
            )
            actions.add_parser("pause", help="stop its ticks (and the one being planned)").add_argument(
                "target", metavar="ID"
            )
            actions.add_parser("resume", help="start its ticks again, from the next one").add_argument(
                "target", metavar="ID"
            )
        for leaf in actions.choices.values():
            leaf.add_argument("--address", default=DEFAULT_ADDRESS, help="the delivery service")

    deliveries = commands.add_parser(
        "deliveries", help="a person's deliveries; dead letters: list, show, replay, discard"
    )
    actions = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION")
    listed = actions.add_parser("list", help="a person's deliveries", description=listing.HELP)
    listed.add_argument("--profile-id", required=True, help="the person")
    letters = actions.add_parser("dead-letters", help="the dead letters", description=listing.HELP)
    letters.add_argument("--destination", default="", help="only those of this destination")
    show = actions.add_parser("show", help="dead letters, whole")
    show.add_argument("delivery_ids", nargs="+", metavar="DELIVERY_ID")
    show.add_argument("--destination", required=True, help="the destination of the dead letters")
    for action, text in (("replay", "send dead letters again"), ("discard", "drop dead letters for good")):
        leaf = actions.add_parser(action, help=f"{text}: ids with --destination, a --destination, or --all")
        leaf.add_argument("delivery_ids", nargs="*", metavar="DELIVERY_ID")
        leaf.add_argument("--destination", default="", help="the destination of the dead letters")
        leaf.add_argument("--all", action="store_true", help=f"{action} every dead letter")
    for leaf in actions.choices.values():
        leaf.add_argument("--address", default=DEFAULT_ADDRESS, help="the delivery service")


def run(args: argparse.Namespace) -> int:
    work = {"destinations": manage_destinations, "campaigns": manage_campaigns}.get(args.command, manage_deliveries)
    return asyncio.run(work(args))


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message)))


DESTINATION_COLUMNS = (
    listing.Column("destination", "destinationId"),
    listing.Column("name", "name"),
    listing.Column("kind", "kind", listing.enum("DESTINATION_KIND_")),
    listing.Column("segment", "segmentId"),
    listing.Column("purpose", "purpose"),
    listing.Column("webhook", "webhookUrl"),
)
CAMPAIGN_COLUMNS = (
    listing.Column("campaign", "campaignId"),
    listing.Column("destination", "destinationId"),
    listing.Column("segment", "segmentId"),
    listing.Column("cron", "schedule.cron"),
    listing.Column("time zone", "schedule.timeZone"),
    listing.Column("last run", "lastRun.status", listing.enum("CAMPAIGN_RUN_STATUS_")),
    listing.Column("next tick", "nextTick"),
    listing.Column("paused at", "pausedAt"),
)
DELIVERY_COLUMNS = (
    listing.Column("delivery", "deliveryId"),
    listing.Column("destination", "destinationId"),
    listing.Column("status", "status", listing.enum("DELIVERY_STATUS_")),
    listing.Column("attempts", "attempts", right=True),
    listing.Column("detail", "detail"),
    listing.Column("updated at", "updatedAt"),
)
DEAD_LETTER_COLUMNS = (
    listing.Column("destination", "destinationId"),
    listing.Column("delivery", "deliveryId"),
    listing.Column("profile", "profileId"),
    listing.Column("attempts", "attempts", right=True),
    listing.Column("last error", "lastError"),
    listing.Column("dead at", "deadAt"),
)


def _read(path: str, message):
    try:
        return json_format.Parse(Path(path).read_text(), message)
    except (OSError, json_format.ParseError) as error:
        raise exits.UsageError(f"{path}: {error}") from None


def _change(path: str, campaign_id: str) -> tuple[campaign_pb2.Campaign, list[str]]:
    """The partial Campaign of a file and the mask of what it names: a field of a message it
    gives as an object names only the fields inside (schedule.cron, not all of schedule)."""
    change = _read(path, campaign_pb2.Campaign())
    if change.campaign_id and change.campaign_id != campaign_id:
        raise exits.UsageError(f"{path}: names campaign {change.campaign_id!r}, not {campaign_id!r}")
    change.campaign_id = campaign_id
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise exits.UsageError(f"{path}: must be a JSON object of the fields to change")

    def names(value: dict, descriptor, prefix: str) -> list[str]:
        fields = {**{f.json_name: f for f in descriptor.fields}, **{f.name: f for f in descriptor.fields}}
        found = []
        for key, inner in value.items():
            field = fields[key]  # json_format.Parse above refused unknown names
            if field.name == "campaign_id" and not prefix:
                continue
            if field.message_type is not None and isinstance(inner, dict) and inner:
                found += names(inner, field.message_type, f"{prefix}{field.name}.")
            else:
                found.append(prefix + field.name)
        return found

    paths = names(raw, campaign_pb2.Campaign.DESCRIPTOR, "")
    if not paths:
        raise exits.UsageError(f"{path}: names no field to change")
    return change, paths


async def manage_destinations(args: argparse.Namespace) -> int:
    async with connect.channel(args.address) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        if args.action == "list":
            with listing.Listing(DESTINATION_COLUMNS) as out:
                request = pb.ListDestinationsRequest()
                async for destination in paging.every(stub.ListDestinations, request, "destinations"):
                    out.add(json_format.MessageToDict(destination))
        elif args.action == "create":
            destination = _read(args.target, delivery_pb2.Destination())
            answer = await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination))
            _print(answer.destination)
            print(f"signing secret (shown once; verify webhooks with it): {answer.signing_secret}", file=sys.stderr)
        elif args.action == "show":
            _print((await stub.GetDestination(pb.GetDestinationRequest(destination_id=args.target))).destination)
        else:
            await stub.DeleteDestination(pb.DeleteDestinationRequest(destination_id=args.target))
            print(json.dumps({"destinationId": args.target, "deleted": True}))
    return 0


async def manage_campaigns(args: argparse.Namespace) -> int:
    async with connect.channel(args.address) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        if args.action == "list":
            with listing.Listing(CAMPAIGN_COLUMNS) as out:
                async for campaign in paging.every(stub.ListCampaigns, pb.ListCampaignsRequest(), "campaigns"):
                    out.add(json_format.MessageToDict(campaign))
        elif args.action == "create":
            campaign = _read(args.target, campaign_pb2.Campaign())
            _print((await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign))).campaign)
        elif args.action == "show":
            _print((await stub.GetCampaign(pb.GetCampaignRequest(campaign_id=args.target))).campaign)
        elif args.action == "update":
            change, paths = _change(args.file, args.target)
            mask = field_mask_pb2.FieldMask(paths=paths)
            _print((await stub.UpdateCampaign(pb.UpdateCampaignRequest(campaign=change, update_mask=mask))).campaign)
        elif args.action == "pause":
            _print((await stub.PauseCampaign(pb.PauseCampaignRequest(campaign_id=args.target))).campaign)
        elif args.action == "resume":
            _print((await stub.ResumeCampaign(pb.ResumeCampaignRequest(campaign_id=args.target))).campaign)
        else:
            await stub.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id=args.target))
            print(json.dumps({"campaignId": args.target, "deleted": True}))
    return 0


async def manage_deliveries(args: argparse.Namespace) -> int:
    async with connect.channel(args.address) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        if args.action == "list":
            request = pb.ListDeliveriesRequest(profile_id=args.profile_id)
            with listing.Listing(DELIVERY_COLUMNS) as out:
                async for record in paging.every(stub.ListDeliveries, request, "deliveries"):
                    out.add(json_format.MessageToDict(record))
        elif args.action == "dead-letters":
            query = pb.ListDeadLettersRequest(destination_id=args.destination, page_size=500)
            with listing.Listing(DEAD_LETTER_COLUMNS) as out:
                async for letter in paging.every(stub.ListDeadLetters, query, "dead_letters"):
                    out.add(
                        {
                            "destinationId": letter.delivery.destination_id,
                            "deliveryId": letter.delivery.delivery_id,
                            "profileId": letter.delivery.profile_id,
                            "attempts": letter.delivery.attempts,
                            "lastError": letter.last_error,
                            "deadAt": letter.dead_at.ToJsonString(),
                        }
                    )
        elif args.action == "show":
            for delivery_id in args.delivery_ids:
                _print(
                    (
                        await stub.GetDeadLetter(
                            pb.GetDeadLetterRequest(destination_id=args.destination, delivery_id=delivery_id)
                        )
                    ).dead_letter
                )
        else:
            if not (args.delivery_ids or args.destination or args.all):
                raise exits.UsageError(
                    f"deliveries {args.action}: name delivery ids with --destination, a --destination, or --all"
                )
            selection = pb.DeadLetterSelection(
                destination_id=args.destination, delivery_ids=args.delivery_ids, all=args.all
            )
            if args.action == "replay":
                answer = await stub.ReplayDeadLetters(pb.ReplayDeadLettersRequest(selection=selection))
            else:
                answer = await stub.DiscardDeadLetters(pb.DiscardDeadLettersRequest(selection=selection))
            print(json.dumps(json_format.MessageToDict(answer, always_print_fields_with_no_presence=True)))
    return 0
