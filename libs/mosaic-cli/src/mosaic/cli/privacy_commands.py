"""`mosaic privacy export|erase|show|requests`: data subjects' requests, through the consent
service's PrivacyService.

`export` and `erase` start a request for a person named by profile id or any identifier, then
wait (`--wait` seconds) until every service has answered: `export` prints the JSON document (or
writes it to `--output`), `erase` the receipts of what each service removed. A request still
pending when the wait ends is printed as it stands, with exit code 4 (exits.PENDING); `mosaic
privacy show ID` follows it later. `requests` lists the pending requests whose legal deadline is within `--due-within` days
(7; past deadlines included), or every request with `--all`. `retention` asks every service
that keeps data for a while (RetentionService) how long, and prints what expires when.
`republish-consent` announces every person's consent again (RepublishConsent), for a service
that keeps a copy and was deployed, upgraded or restored after the notices left the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from google.protobuf import json_format

from mosaic.cli import connect, exits, listing, paging
from mosaic.consent.v1 import (
    consent_pb2,
    consent_service_pb2,
    consent_service_pb2_grpc,
    privacy_pb2,
    privacy_service_pb2_grpc,
)
from mosaic.consent.v1 import privacy_service_pb2 as pb
from mosaic.identity.v1 import identity_pb2
from mosaic.retention.v1 import retention_service_pb2, retention_service_pb2_grpc

COMMANDS = ("privacy",)
DEFAULT_ADDRESS = "127.0.0.1:50055"
# The services that keep data for a configured time, where `mosaic run` puts them.
RETENTION_ADDRESSES = {"profile": "127.0.0.1:50053", "delivery": "127.0.0.1:50056"}
MAX_EXPORT_BYTES = 512 * 1024 * 1024
JURISDICTIONS = {"gdpr": consent_pb2.JURISDICTION_GDPR, "ccpa": consent_pb2.JURISDICTION_CCPA}


def add_commands(commands: argparse._SubParsersAction) -> None:
    privacy = commands.add_parser("privacy", help="export or erase a person's data; list requests near their deadline")
    verbs = privacy.add_subparsers(dest="verb", required=True)
    for verb, text in (
        ("export", "everything held about a person, as one JSON document"),
        ("erase", "erase a person from every service and suppress them at ingestion"),
    ):
        parser = verbs.add_parser(verb, help=text)
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--profile-id")
        who.add_argument("--user-id")
        who.add_argument("--email")
        who.add_argument(
            "--identifier", type=_identifier, metavar="TYPE:VALUE", help="any identifier, e.g. anonymous_id:a1"
        )
        parser.add_argument("--jurisdiction", choices=tuple(JURISDICTIONS), help="decides the deadline (30 or 45 days)")
        parser.add_argument("--request-id", default="", help="makes a repeated command the same request")
        parser.add_argument("--requested-by", default="", help="who asks: an operator, a ticket")
        parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for every service (0: do not)")
        if verb == "export":
            parser.add_argument("--output", type=Path, help="write the document here instead of printing it")
    show = verbs.add_parser("show", help="one request with its receipts")
    show.add_argument("request_id")
    requests = verbs.add_parser(
        "requests", help="pending requests due within --due-within days (or --all)", description=listing.HELP
    )
    requests.add_argument("--due-within", type=int, default=7, help="days (7; past deadlines included)")
    requests.add_argument("--all", action="store_true", help="every request, pending or not")
    verbs.add_parser(
        "republish-consent",
        help="announce every person's consent again, for a service deployed or restored after it was recorded",
    )
    for parser in (*verbs.choices.values(),):
        parser.add_argument("--address", default=DEFAULT_ADDRESS, help="the consent service")
    kept = verbs.add_parser(
        "retention", help="how long each kind of data is kept, and what expires when", description=listing.HELP
    )
    for service, address in RETENTION_ADDRESSES.items():
        kept.add_argument(f"--{service}-address", default=address, help=f"the {service} service")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def _identifier(text: str) -> str:
    kind, sep, value = text.partition(":")
    if not sep or not kind or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not TYPE:VALUE")
    return text


def _selector(args: argparse.Namespace) -> pb.PersonSelector:
    if args.profile_id:
        return pb.PersonSelector(profile_id=args.profile_id)
    if args.user_id:
        return pb.PersonSelector(identifier=identity_pb2.Identifier(type="user_id", value=args.user_id))
    if args.email:
        return pb.PersonSelector(identifier=identity_pb2.Identifier(type="email", value=args.email.strip().lower()))
    kind, _, value = args.identifier.partition(":")
    return pb.PersonSelector(identifier=identity_pb2.Identifier(type=kind, value=value))


def _summary(request: privacy_pb2.PrivacyRequest) -> dict:
    return json_format.MessageToDict(request, preserving_proto_field_name=True)


async def _run(args: argparse.Namespace) -> int:
    if args.verb == "retention":
        return await show_retention(args)
    # An export of a long customer life is more than gRPC's default 4 MB a message.
    options = [("grpc.max_receive_message_length", MAX_EXPORT_BYTES)]
    async with connect.channel(args.address, options=options) as channel:
        stub = privacy_service_pb2_grpc.PrivacyServiceStub(channel)
        if args.verb == "requests":
            return await _list(stub, args)
        if args.verb == "republish-consent":
            consent = consent_service_pb2_grpc.ConsentServiceStub(channel)
            done = await consent.RepublishConsent(consent_service_pb2.RepublishConsentRequest())
            print(json.dumps({"persons": done.persons, "run_id": done.run_id}))
            return 0
        if args.verb == "show":
            answer = await stub.GetPrivacyRequest(pb.GetPrivacyRequestRequest(request_id=args.request_id))
            print(json.dumps(_summary(answer.request), indent=2))
            return 0
        fields = dict(
            person=_selector(args),
            request_id=args.request_id,
            requested_by=args.requested_by,
            jurisdiction=JURISDICTIONS.get(args.jurisdiction or "", 0),
        )
        if args.verb == "export":
            started = (await stub.ExportPerson(pb.ExportPersonRequest(**fields))).request
        else:
            started = (await stub.ErasePerson(pb.ErasePersonRequest(**fields))).request
        print(
            f"request {started.request_id} for person {started.person_id}, due {started.deadline.ToJsonString()}",
            file=sys.stderr,
        )
        answer = await _wait(stub, started.request_id, args.wait)
        if answer.request.state != privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED:
            missing = sorted(set(answer.request.participants) - {r.participant for r in answer.request.receipts})
            print(
                f"still pending after {args.wait:.0f} s, waiting for: {', '.join(missing)}"
                f" (mosaic privacy show {started.request_id})",
                file=sys.stderr,
            )
            print(json.dumps(_summary(answer.request), indent=2))
            return exits.PENDING
        if args.verb == "export":
            document = json.dumps(json.loads(answer.export_json), indent=2)
            if args.output:
                args.output.write_text(document + "\n")
                print(f"wrote {args.output}", file=sys.stderr)
            else:
                print(document)
        else:
            print(json.dumps(_summary(answer.request), indent=2))
        return 0


async def _wait(stub, request_id: str, seconds: float) -> pb.GetPrivacyRequestResponse:
    deadline = time.monotonic() + seconds
    while True:
        answer = await stub.GetPrivacyRequest(pb.GetPrivacyRequestRequest(request_id=request_id))
        if answer.request.state == privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED or time.monotonic() >= deadline:
            return answer
        await asyncio.sleep(0.2)


REQUEST_COLUMNS = (
    listing.Column("request", "request_id"),
    listing.Column("kind", "kind", listing.enum("PRIVACY_REQUEST_KIND_")),
    listing.Column("state", "state", listing.enum("PRIVACY_REQUEST_STATE_")),
    listing.Column("deadline", "deadline"),
    listing.Column("days left", "days_left", lambda days: f"{days:.1f}", right=True),
    listing.Column("waiting for", "waiting_for"),
)
RETENTION_COLUMNS = (
    listing.Column("service", "service"),
    listing.Column("kind", "kind"),
    listing.Column("kept", "retention", lambda kept: f"{float(kept[:-1]) / 86400:g} days" if kept else "for good"),
    listing.Column("gone if written before", "expires_before", lambda at: at[:19] + "Z" if at else "-"),
    listing.Column("swept", "swept_rows", lambda rows: str(rows or 0), right=True),
    listing.Column("how", "mechanism"),
    listing.Column("setting", "setting"),
)


async def _list(stub, args: argparse.Namespace) -> int:
    """The requests, with the days left before each one's deadline and who it still waits for."""
    query = (
        pb.ListPrivacyRequestsRequest(page_size=1000)
        if args.all
        else pb.ListPrivacyRequestsRequest(page_size=1000, due_within_days=max(args.due_within, 0) or 7)
    )
    now = time.time()
    with listing.Listing(REQUEST_COLUMNS) as out:
        async for request in paging.every(stub.ListPrivacyRequests, query, "requests"):
            pending = request.state == privacy_pb2.PRIVACY_REQUEST_STATE_PENDING
            missing = sorted(set(request.participants) - {r.participant for r in request.receipts})
            out.add(
                {
                    **_summary(request),
                    "days_left": round((request.deadline.seconds - now) / 86400, 3),
                    "waiting_for": missing if pending else [],
                }
            )
    return 0


async def show_retention(args: argparse.Namespace) -> int:
    """Every service's retention, kind by kind."""
    with listing.Listing(RETENTION_COLUMNS) as out:
        for service in RETENTION_ADDRESSES:
            async with connect.channel(getattr(args, f"{service}_address")) as channel:
                answer = await retention_service_pb2_grpc.RetentionServiceStub(channel).GetRetention(
                    retention_service_pb2.GetRetentionRequest()
                )
            for kind in answer.kinds:
                fields = json_format.MessageToDict(kind, preserving_proto_field_name=True)
                out.add({"service": answer.service, "store": answer.store, **fields})
    return 0
