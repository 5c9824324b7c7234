"""`mosaic segments ...`: define segments in the segment language, estimate, list members."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import grpc
from google.protobuf import json_format

from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb

COMMANDS = ("segments",)
DEFAULT_ADDRESS = "127.0.0.1:50054"


def add_commands(commands: argparse._SubParsersAction) -> None:
    segments = commands.add_parser("segments", help="create, update, show, list, delete, estimate segments; members")
    segments.add_argument("action", choices=("create", "update", "show", "list", "delete", "estimate", "members"))
    segments.add_argument("target", nargs="?", help="the segment id (estimate: the definition)")
    segments.add_argument("definition", nargs="?", help="create, update: the definition, e.g. 'traits.plan = \"pro\"'")
    segments.add_argument("--name", help="create, update: the segment's name (default: its id)")
    segments.add_argument("--address", default=DEFAULT_ADDRESS, help="the segmentation service")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except grpc.aio.AioRpcError as error:
        print(f"{error.code().name}: {error.details()}", file=sys.stderr)
        return 1


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message), indent=2))


async def _run(args: argparse.Namespace) -> int:
    needs = {"create": 2, "update": 2, "show": 1, "delete": 1, "estimate": 1, "members": 1, "list": 0}[args.action]
    if [args.target, args.definition][:needs].count(None):
        print(
            f"mosaic segments {args.action}: needs {'an id and a definition' if needs == 2 else 'one argument'}",
            file=sys.stderr,
        )
        return 2
    async with grpc.aio.insecure_channel(args.address) as channel:
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
            token = ""
            while True:
                page = await stub.ListSegments(pb.ListSegmentsRequest(page_token=token))
                for segment in page.segments:
                    print(f"{segment.segment_id}\t{segment.name}\t{segment.definition}")
                token = page.next_page_token
                if not token:
                    break
    return 0
