"""`mosaic destinations` and `mosaic deliveries` against the service in-process."""

import argparse
import json

import pytest

from mosaic.cli import delivery_commands
from mosaic.testing.plugin import eventually
from mosaic.testing.receivers import WebhookReceiver


@pytest.fixture
def refusing_receiver():
    receiver = WebhookReceiver(status=404).start()
    yield receiver
    receiver.stop()


def args(command, action, address, **extra):
    values = {"target": None, "delivery_ids": [], "profile_id": None, "destination": "", "all": False, **extra}
    return argparse.Namespace(command=command, action=action, address=address, **values)


async def test_destinations_and_dead_letters_are_managed_from_the_command_line(
    service, membership, consent, refusing_receiver, tmp_path, capsys
):
    address = f"127.0.0.1:{service.port}"
    spec = tmp_path / "hook.json"
    spec.write_text(
        json.dumps(
            {
                "destinationId": "cli-hook",
                "webhookUrl": refusing_receiver.url("/x"),
                "segmentId": "vip",
                "purpose": "marketing",
                "headers": {"X-Token": "t0p"},
            }
        )
    )
    assert await delivery_commands.manage_destinations(args("destinations", "create", address, target=str(spec))) == 0
    created = capsys.readouterr()
    assert json.loads(created.out)["destinationId"] == "cli-hook" and "whsec_" in created.err
    assert "t0p" not in created.out

    await consent("p-1")
    await membership("vip", "p-1")

    async def letters():
        await delivery_commands.manage_deliveries(args("deliveries", "dead-letters", address))
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    [letter] = await eventually(letters)
    assert (letter["destinationId"], letter["profileId"], letter["lastError"]) == ("cli-hook", "p-1", "HTTP 404")

    refusing_receiver.status = 200
    assert await delivery_commands.manage_deliveries(args("deliveries", "replay", address, all=True)) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] == 1

    async def sent():
        await delivery_commands.manage_deliveries(args("deliveries", "list", address, profile_id="p-1"))
        return [
            json.loads(line)
            for line in capsys.readouterr().out.splitlines()
            if json.loads(line)["status"] == "DELIVERY_STATUS_SENT"
        ]

    await eventually(sent)
    assert await delivery_commands.manage_destinations(args("destinations", "delete", address, target="cli-hook")) == 0
    capsys.readouterr()
    await delivery_commands.manage_destinations(args("destinations", "list", address))
    assert capsys.readouterr().out == ""
