"""The `mosaic` command line: `mosaic run` brings up the mesh locally; `mosaic profile` reads one."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from google.protobuf import json_format

from mosaic.cli import (
    apis,
    connect,
    delivery_commands,
    demo_report,
    exits,
    ingest_commands,
    pki,
    privacy_commands,
    segment_commands,
    status,
)
from mosaic.cli.demo_webhook import DemoWebhook
from mosaic.cli.mesh import SERVICES, Mesh, MeshError

DEMO_WEBHOOK_PORT = 50080
SERVICE_NAMES = {name: f"mosaic.{name}.v1.{name.capitalize()}Service" for name in SERVICES}


def _mesh_env(store: str) -> dict[str, str]:
    env = {
        "MOSAIC_NATS_URL": os.environ.get("MOSAIC_NATS_URL", "nats://127.0.0.1:4222"),
        "MOSAIC_STORE": store,
        "MOSAIC_DATA_DIR": os.environ.get("MOSAIC_DATA_DIR", ".local/data"),
        # A local mesh takes events for any source id, as the README's first calls (`web`) do.
        "MOSAIC_INGEST_OPEN_SOURCES": os.environ.get("MOSAIC_INGEST_OPEN_SOURCES", "true"),
        # Delivery outcomes come back as events of the mosaic-delivery source.
        "MOSAIC_DELIVERY_FEEDBACK": os.environ.get("MOSAIC_DELIVERY_FEEDBACK", "true"),
    }
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ:
        env["OTEL_TRACES_EXPORTER"] = os.environ.get("OTEL_TRACES_EXPORTER", "none")  # no collector locally
    return env


def _show_demo(mesh: Mesh, receiver: DemoWebhook, customers: int, seed: int, auth: str) -> bool:
    """Load the demo and print its report; False when it gave up waiting for the mesh."""
    from mosaic.cli.backlog import DemoStalled
    from mosaic.cli.demo import run_demo

    print(f"Loading the demo: {customers:,} customers (seed {seed}) ...", flush=True)
    try:
        report = asyncio.run(run_demo(mesh, receiver, customers, seed))
    except DemoStalled as stalled:
        # The mesh is fine, only busy or stuck: leave it running for the user to look at.
        print(
            f"\nThe demo gave up waiting for {stalled}.\nThe mesh keeps running; its logs are in .local/logs/.",
            file=sys.stderr,
        )
        return False
    print(demo_report.render(report, mesh, auth))
    return True


def run(args: argparse.Namespace) -> int:
    # Ctrl-C and SIGTERM are taken by sigwait below, never as exceptions: a second Ctrl-C
    # (make and uv forward it too) must not cut the mesh's own stop short.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    credentials = pki.ensure(connect.LOCAL_PKI, admin_scopes=apis.scopes())
    mesh = Mesh(_mesh_env(args.store), Path(".local/logs"), fixed_ports=True, service_env=credentials.service_env)
    try:
        mesh.start()
    except MeshError as error:
        mesh.stop()
        print(f"the mesh did not start: {error}", file=sys.stderr)
        return 1
    # A fixed port: the demo destination stored by an earlier run must still reach it.
    receiver = DemoWebhook(port=DEMO_WEBHOOK_PORT).start() if args.demo else None
    try:
        print(f"\nMosaic is running (store: {args.store}; logs in .local/logs/):\n")
        for name in SERVICES:
            print(f"  {name:<13} {mesh.address(name):<16} {SERVICE_NAMES[name]}")
        print(
            f"  {'ingestion':<13} http://127.0.0.1:{mesh.http_ports['ingestion']:<5}  Segment-compatible HTTP API (/v1/track, /v1/batch...)"
        )
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in os.environ:  # `make observe`
            zipkin_line = (
                "  trace UI      Zipkin http://127.0.0.1:9411/zipkin/ (spans sent to "
                f"{os.environ['OTEL_EXPORTER_ZIPKIN_ENDPOINT']})\n"
                if "OTEL_EXPORTER_ZIPKIN_ENDPOINT" in os.environ
                else ""
            )
            print(
                f"\n  traces        exported to {os.environ['OTEL_EXPORTER_OTLP_ENDPOINT']} (Jaeger: "
                "curl 'http://127.0.0.1:16686/api/traces?service=ingestion&limit=5')\n"
                f"{zipkin_line}"
                "  metrics       http://127.0.0.1:9461-9466/metrics, Prometheus http://127.0.0.1:9090\n"
                "  status        uv run mosaic status"
            )
        # TLS and tokens on, as in production; the local PKI's admin token has every scope.
        auth = f'-cacert {credentials.ca} -H "authorization: Bearer $(cat {credentials.token("admin")})"'
        print(
            "\nTry (credentials in .local/pki/; tokens/reader.token lacks profiles:read_pii):\n"
            f"  grpcurl {auth} {mesh.address('ingestion')} list\n"
            f'  grpcurl {auth} -d \'{{"identifier": {{"type": "user_id", "value": "cust-00000"}}}}\' '
            f"{mesh.address('identity')} mosaic.identity.v1.IdentityService/Lookup\n"
            f"  uv run mosaic profile --user-id cust-00000\n"
        )
        if receiver is not None and not _show_demo(mesh, receiver, args.demo_customers, args.demo_seed, auth):
            if args.exit_after_demo:
                return 1
        if args.exit_after_demo:
            return 0
        print("Ctrl-C stops the mesh.")
        # Every second: a signal stops the mesh; a service that died is restarted, or the
        # mesh stops saying why, rather than ingestion answering 200 for a dead pipeline.
        while signal.sigtimedwait({signal.SIGINT, signal.SIGTERM}, 1.0) is None:
            try:
                mesh.supervise()
            except MeshError as error:
                print(f"the mesh stopped: {error}", file=sys.stderr)
                return 1
        return 0
    finally:
        if receiver is not None:
            receiver.stop()
        mesh.stop()


async def _profile(args: argparse.Namespace) -> int:
    from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
    from mosaic.profile.v1 import profile_service_pb2, profile_service_pb2_grpc

    profile_id = args.profile_id
    if args.user_id:
        async with connect.channel(args.identity) as channel:
            answer = await identity_service_pb2_grpc.IdentityServiceStub(channel).Lookup(
                identity_service_pb2.LookupRequest(
                    identifier=identity_pb2.Identifier(type="user_id", value=args.user_id)
                )
            )
            profile_id = answer.profile_id
    async with connect.channel(args.address) as channel:
        answer = await profile_service_pb2_grpc.ProfileServiceStub(channel).GetProfile(
            profile_service_pb2.GetProfileRequest(profile_id=profile_id)
        )
    print(json.dumps(json_format.MessageToDict(answer.profile), indent=2))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """Every command, each action its own subcommand with its own flags."""
    parser = argparse.ArgumentParser(
        prog="mosaic",
        description="Mosaic, the customer data platform. `mosaic COMMAND --help` and "
        "`mosaic COMMAND ACTION --help` say what each one takes.",
        epilog=f"lists print a table on a terminal and one JSON object a line when stdout is not one "
        f"(a pipe, a file).\n\n{exits.TABLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser("run", help="run the six services locally (nats-server must be running)")
    run_parser.add_argument("--store", choices=("embedded", "cassandra"), default=os.environ.get("STORE", "embedded"))
    run_parser.add_argument("--demo", action="store_true", help="load the demo data set")
    run_parser.add_argument("--exit-after-demo", action="store_true", help="stop once the demo data has flowed")
    run_parser.add_argument(
        "--demo-customers", type=_positive, default=3000, help="how many customers the demo generates (3,000)"
    )
    run_parser.add_argument("--demo-seed", type=int, default=7, help="the seed the demo data set is generated from")
    profile_parser = commands.add_parser("profile", help="print one profile")
    who = profile_parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--profile-id")
    who.add_argument("--user-id")
    profile_parser.add_argument("--address", default="127.0.0.1:50053", help="the profile service")
    profile_parser.add_argument("--identity", default="127.0.0.1:50052", help="the identity service")
    ingest_commands.add_commands(commands)
    privacy_commands.add_commands(commands)
    status.add_commands(commands)
    delivery_commands.add_commands(commands)
    segment_commands.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command's exit code (exits.TABLE); argparse exits with 2 itself on a usage error."""
    args = parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    modules = (ingest_commands, privacy_commands, status, delivery_commands, segment_commands)
    module = next((module for module in modules if args.command in module.COMMANDS), None)
    work = (lambda: module.run(args)) if module else (lambda: asyncio.run(_profile(args)))
    return exits.guarded(work, args.command)


if __name__ == "__main__":
    sys.exit(main())
