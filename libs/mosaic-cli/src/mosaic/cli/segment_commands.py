"""`mosaic segments ...`: define segments in the segment language, estimate, list members."""

from __future__ import annotations

import argparse
import asyncio
import json

from google.protobuf import json_format

from mosaic.cli import connect, listing, paging
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb

COMMANDS = ("segments",)
DEFAULT_ADDRESS = "127.0.0.1:50054"


def add_commands(commands: argparse._SubParsersAction) -> None:
    segments = commands.add_parser("segments", help="create, update, show, list, delete, estimate segments; members")
    actions = segments.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("create", "define a segment"), ("update", "change a segment's definition and name")):
        leaf = actions.add_parser(action, help=text)
        leaf.add_argument("target", metavar="SEGMENT_ID")
        leaf.add_argument("definition", help="in the segment language, e.g. 'traits.plan = \"pro\"'")
        leaf.add_argument("--name", help="the segment's name (default: its id)")
    actions.add_parser("show", help="one segment").add_argument("target", metavar="SEGMENT_ID")
    actions.add_parser("list", help="every segment", description=listing.HELP)
    actions.add_parser("delete", help="delete a segment").add_argument("target", metavar="SEGMENT_ID")
    estimate = actions.add_parser("estimate", help="how many profiles a definition matches now, with a sample")
    estimate.add_argument("target", metavar="DEFINITION")
    members = actions.add_parser("members", help="the segment's profile ids, one a line")
    members.add_argument("target", metavar="SEGMENT_ID")
    for leaf in actions.choices.values():
        leaf.add_argument("--address", default=DEFAULT_ADDRESS, help="the segmentation service")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message), indent=2))


COLUMNS = (
    listing.Column("segment", "segmentId"),
    listing.Column("name", "name"),
    listing.Column("definition", "definition"),
)


async def _run(args: argparse.Namespace) -> int:
    async with connect.channel(args.address) as channel:
        stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
        if args.action in ("create", "update"):
            segment = segment_pb2.Segment(
                segment_id=args.target, name=args.name or args.target, definition=args.definition
            )
            if args.action == "create":
                _print((await stub.CreateSegment(pb.CreateSegmentRequest(segment=segment))).segment)
            else:
                _print((await stub.UpdateSegment(pb.UpdateSegmentRequest(segment=segment))).segment)
        elif args.action == "show":
            _print((await stub.GetSegment(pb.GetSegmentRequest(segment_id=args.target))).segment)
        elif args.action == "delete":
            await stub.DeleteSegment(pb.DeleteSegmentRequest(segment_id=args.target))
        elif args.action == "estimate":
            _print(await stub.Estimate(pb.EstimateRequest(definition=args.target)))
        elif args.action == "members":
            async for member in stub.ListMembers(pb.ListMembersRequest(segment_id=args.target)):
                print(member.profile_id)
        else:
            with listing.Listing(COLUMNS) as out:
                async for segment in paging.every(stub.ListSegments, pb.ListSegmentsRequest(), "segments"):
                    out.add(json_format.MessageToDict(segment))
    return 0
