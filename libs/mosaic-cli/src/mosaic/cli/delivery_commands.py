"""`mosaic destinations`, `mosaic campaigns` and `mosaic deliveries`: the delivery service's commands.

mosaic destinations create FILE.json     a Destination as JSON; prints it and its secret once
mosaic destinations list | show ID | delete ID
mosaic campaigns create FILE.json        a Campaign as JSON (cron schedule, segment, destination)
mosaic campaigns list | show ID | delete ID   with each one's last run and next tick
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

import grpc
from google.protobuf import json_format

from mosaic.cli import paging
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2, delivery_service_pb2_grpc
from mosaic.delivery.v1 import delivery_service_pb2 as pb

COMMANDS = ("destinations", "campaigns", "deliveries")
DEFAULT_ADDRESS = "127.0.0.1:50056"


def add_commands(commands: argparse._SubParsersAction) -> None:
    destinations = commands.add_parser("destinations", help="create, list, show or delete delivery destinations")
    destinations.add_argument("action", choices=("create", "list", "show", "delete"))
    destinations.add_argument("target", nargs="?", help="create: a JSON file (Destination); show/delete: the id")
    destinations.add_argument("--address", default=DEFAULT_ADDRESS, help="the delivery service")
    campaigns = commands.add_parser("campaigns", help="create, list, show or delete scheduled broadcasts")
    campaigns.add_argument("action", choices=("create", "list", "show", "delete"))
    campaigns.add_argument("target", nargs="?", help="create: a JSON file (Campaign); show/delete: the id")
    campaigns.add_argument("--address", default=DEFAULT_ADDRESS, help="the delivery service")
    deliveries = commands.add_parser(
        "deliveries", help="a person's deliveries; dead letters: list, show, replay, discard"
    )
    deliveries.add_argument("action", choices=("list", "dead-letters", "show", "replay", "discard"))
    deliveries.add_argument("delivery_ids", nargs="*")
    deliveries.add_argument("--profile-id", help="list: the person")
    deliveries.add_argument("--destination", default="", help="the destination of the dead letters")
    deliveries.add_argument("--all", action="store_true", help="replay or discard every dead letter")
    deliveries.add_argument("--address", default=DEFAULT_ADDRESS, help="the delivery service")


def run(args: argparse.Namespace) -> int:
    work = {"destinations": manage_destinations, "campaigns": manage_campaigns}.get(args.command, manage_deliveries)
    try:
        return asyncio.run(work(args))
    except grpc.aio.AioRpcError as error:
        print(f"{error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except UsageError as error:
        print(str(error), file=sys.stderr)
        return 2


class UsageError(Exception):
    pass


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message)))


async def manage_destinations(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        if args.action == "list":
            async for destination in paging.every(stub.ListDestinations, pb.ListDestinationsRequest(), "destinations"):
                _print(destination)
            return 0
        if not args.target:
            raise UsageError(
                f"destinations {args.action}: name {'a JSON file' if args.action == 'create' else 'the id'}"
            )
        if args.action == "create":
            try:
                destination = json_format.Parse(Path(args.target).read_text(), delivery_pb2.Destination())
            except (OSError, json_format.ParseError) as error:
                raise UsageError(f"{args.target}: {error}") from None
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
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        if args.action == "list":
            for campaign in (await stub.ListCampaigns(pb.ListCampaignsRequest())).campaigns:
                _print(campaign)
            return 0
        if not args.target:
            raise UsageError(f"campaigns {args.action}: name {'a JSON file' if args.action == 'create' else 'the id'}")
        if args.action == "create":
            try:
                campaign = json_format.Parse(Path(args.target).read_text(), campaign_pb2.Campaign())
            except (OSError, json_format.ParseError) as error:
                raise UsageError(f"{args.target}: {error}") from None
            _print((await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign))).campaign)
        elif args.action == "show":
            _print((await stub.GetCampaign(pb.GetCampaignRequest(campaign_id=args.target))).campaign)
        else:
            await stub.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id=args.target))
            print(json.dumps({"campaignId": args.target, "deleted": True}))
    return 0


async def manage_deliveries(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        if args.action == "list":
            if not args.profile_id:
                raise UsageError("deliveries list: --profile-id is required")
            request = pb.ListDeliveriesRequest(profile_id=args.profile_id)
            async for record in paging.every(stub.ListDeliveries, request, "deliveries"):
                _print(record)
        elif args.action == "dead-letters":
            token = ""
            while True:
                page = await stub.ListDeadLetters(
                    pb.ListDeadLettersRequest(destination_id=args.destination, page_size=500, page_token=token)
                )
                for letter in page.dead_letters:
                    print(
                        json.dumps(
                            {
                                "destinationId": letter.delivery.destination_id,
                                "deliveryId": letter.delivery.delivery_id,
                                "profileId": letter.delivery.profile_id,
                                "attempts": letter.delivery.attempts,
                                "lastError": letter.last_error,
                                "deadAt": letter.dead_at.ToJsonString(),
                            }
                        )
                    )
                token = page.next_page_token
                if not token:
                    break
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
                raise UsageError(
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
