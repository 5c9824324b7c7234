"""The shape of the `mosaic` command line: each action its own subcommand with only its own
flags, usage errors exit 2, and every command's exit code follows one table (exits.py)."""

from __future__ import annotations

import io
import json
import re
import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from rich.console import Console

from mosaic.cli import exits
from mosaic.cli.__main__ import main, parser
from mosaic.cli.listing import Column, Listing

# Every action of the commands that have several, with the flags it takes (and --help).
FLAGS = {
    ("sources", "create"): {"--name", "--plan", "--transforms", "--rate", "--burst", "--disable", "--address"},
    ("sources", "update"): {
        "--name",
        "--plan",
        "--transforms",
        "--rate",
        "--burst",
        "--disable",
        "--enable",
        "--address",
    },
    ("sources", "list"): {"--address"},
    ("sources", "show"): {"--address"},
    ("sources", "rotate-key"): {"--grace", "--address"},
    ("quarantine", "list"): {"--source", "--address"},
    ("quarantine", "show"): {"--source", "--address"},
    ("quarantine", "replay"): {"--all", "--event", "--source", "--address"},
    ("quarantine", "discard"): {"--all", "--source", "--address"},
    **{
        (command, action): {"--address"}
        for command in ("destinations", "campaigns")
        for action in ("create", "list", "show", "delete")
    },
    ("deliveries", "list"): {"--profile-id", "--address"},
    ("deliveries", "dead-letters"): {"--destination", "--address"},
    ("deliveries", "show"): {"--destination", "--address"},
    ("deliveries", "replay"): {"--destination", "--all", "--address"},
    ("deliveries", "discard"): {"--destination", "--all", "--address"},
    ("segments", "create"): {"--name", "--address"},
    ("segments", "update"): {"--name", "--address"},
    **{("segments", action): {"--address"} for action in ("show", "list", "delete", "estimate", "members")},
}


@pytest.mark.parametrize(("command", "action"), sorted(FLAGS))
def test_each_action_lists_only_its_own_flags(command, action, capsys):
    with pytest.raises(SystemExit) as done:
        parser().parse_args([command, action, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert set(re.findall(r"--[a-z][a-z-]*", shown)) == FLAGS[(command, action)] | {"--help"}
    assert f"usage: mosaic {command} {action} " in shown


@pytest.mark.parametrize("command", sorted({command for command, _ in FLAGS}))
def test_a_command_lists_its_actions_each_with_a_help_line(command, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args([command, "--help"])
    shown = capsys.readouterr().out
    for action in (a for c, a in FLAGS if c == command):
        assert re.search(rf"^    {action}\s*\n?\s+\S", shown, re.MULTILINE), action


@pytest.mark.parametrize(
    "argv",
    [
        ["sources", "show"],
        ["sources", "create", "--name", "Shop"],
        ["sources", "rotate-key"],
        ["quarantine", "show", "--source", "web"],
        ["quarantine", "list"],  # --source is required
        ["destinations", "show"],
        ["destinations", "create"],
        ["campaigns", "delete"],
        ["deliveries", "list"],  # --profile-id is required
        ["deliveries", "show", "d-1"],  # --destination is required
        ["segments", "create", "vip"],  # the definition is missing
        ["segments", "members"],
        ["privacy", "show"],
    ],
)
def test_a_missing_argument_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--address", "127.0.0.1:1"])
    assert refused.value.code == exits.USAGE
    assert "the following arguments are required" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["sources", "delete", "web"],
        ["sources"],
        ["billing"],
        ["quarantine", "replay", "q1", "--source", "web", "--grace", "5"],  # another action's flag
        ["sources", "list", "--name", "x"],
        ["privacy", "erase", "--identifier", "no-colon"],
        ["import", "events.csv", "--source", "files", "--map", "mail"],
    ],
)
def test_an_unknown_action_flag_or_value_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == exits.USAGE
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["deliveries", "replay"],  # neither ids, a destination nor --all
        ["quarantine", "discard", "--source", "web"],
        ["destinations", "create", "/nonexistent/hook.json"],
        ["import", "/nonexistent/events.ndjson", "--source", "files"],
        ["status", "--address", "billing=127.0.0.1:1"],
    ],
)
def test_what_only_the_command_can_check_is_a_usage_error_too(argv, capsys):
    assert main([*argv, "--address", f"127.0.0.1:{_closed_port()}"]) == exits.USAGE
    assert f"mosaic {argv[0]}: error:" in capsys.readouterr().err


def test_the_help_says_the_exit_codes_and_how_lists_print(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    assert "exit codes:" in shown and "130" in shown and "UNAVAILABLE" in shown
    assert "one JSON object a line" in shown


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once the socket is closed


@pytest.mark.parametrize(
    "argv",
    [
        ["sources", "list"],
        ["quarantine", "list", "--source", "web"],
        ["destinations", "list"],
        ["campaigns", "show", "monday"],
        ["deliveries", "dead-letters"],
        ["segments", "list"],
        ["privacy", "show", "x-1"],
        ["profile", "--profile-id", "p-1"],
    ],
)
def test_a_service_nobody_listens_on_exits_3(argv, capsys):
    assert main([*argv, "--address", f"127.0.0.1:{_closed_port()}"]) == exits.UNREACHABLE
    assert capsys.readouterr().err.startswith("UNAVAILABLE: ")


@pytest.fixture
def empty_server() -> Iterator[str]:
    """A real gRPC server that serves no service: every call is answered UNIMPLEMENTED."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize(
    "argv",
    [["sources", "show", "web"], ["deliveries", "list", "--profile-id", "p-1"], ["segments", "estimate", "is known"]],
)
def test_a_service_that_says_no_exits_1_naming_the_code(argv, empty_server, capsys):
    assert main([*argv, "--address", empty_server]) == exits.REFUSED
    assert capsys.readouterr().err.startswith("UNIMPLEMENTED: ")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, exits.REFUSED),
        (grpc.StatusCode.PERMISSION_DENIED, exits.REFUSED),
        (grpc.StatusCode.UNAVAILABLE, exits.UNREACHABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, exits.UNREACHABLE),
    ],
)
def test_a_grpc_error_gives_the_code_of_the_table(code, expected, capsys):
    def refused() -> int:
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="told so")

    assert exits.guarded(refused, "sources") == expected
    assert capsys.readouterr().err == f"{code.name}: told so\n"


def test_an_interrupted_command_exits_130(capsys):
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert exits.guarded(interrupted, "sources") == exits.INTERRUPTED
    assert "interrupted" in capsys.readouterr().err


COLUMNS = (Column("source", "sourceId"), Column("events/s", "rateLimit.eventsPerSecond", right=True))
ROWS = [{"sourceId": "web", "rateLimit": {"eventsPerSecond": 50}}, {"sourceId": "crm"}]


def test_a_list_is_a_table_on_a_terminal():
    out = io.StringIO()
    with Listing(COLUMNS, Console(file=out, force_terminal=True, width=80, color_system=None)) as listing:
        for row in ROWS:
            listing.add(row)
    lines = out.getvalue().splitlines()
    assert any("source" in line and "events/s" in line for line in lines)
    assert any(line.split("│")[1:3] == [" web    ", "       50 "] for line in lines), lines
    assert any("crm" in line for line in lines)


def test_a_list_is_json_lines_elsewhere():
    out = io.StringIO()
    with Listing(COLUMNS, Console(file=out)) as listing:
        for row in ROWS:
            listing.add(row)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == ROWS
