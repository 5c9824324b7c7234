"""`mosaic destinations`, `mosaic campaigns` and `mosaic deliveries` against the service in-process."""

import argparse
import json

import grpc
import pytest

from mosaic.cli import delivery_commands, exits
from mosaic.segmentation.v1 import segment_pb2
from mosaic.segmentation.v1 import segmentation_service_pb2 as seg
from mosaic.testing.plugin import eventually
from mosaic.testing.receivers import WebhookReceiver


@pytest.fixture
def refusing_receiver():
    receiver = WebhookReceiver(status=404).start()
    yield receiver
    receiver.stop()


def args(command, action, address, **extra):
    values = {
        "target": None,
        "file": None,
        "delivery_ids": [],
        "profile_id": None,
        "destination": "",
        "all": False,
        **extra,
    }
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


async def test_campaigns_are_managed_from_the_command_line(with_segments, service, segments, tmp_path, capsys):
    address = f"127.0.0.1:{service.port}"
    await segments.CreateSegment(
        seg.CreateSegmentRequest(segment=segment_pb2.Segment(segment_id="pro", name="pro", definition="has email"))
    )
    hook = tmp_path / "hook.json"
    hook.write_text(json.dumps({"destinationId": "news", "webhookUrl": "http://127.0.0.1:9/x", "purpose": "marketing"}))
    assert await delivery_commands.manage_destinations(args("destinations", "create", address, target=str(hook))) == 0
    spec = tmp_path / "campaign.json"
    fields = {
        "campaignId": "monday",
        "destinationId": "news",
        "segmentId": "pro",
        "schedule": {"cron": "0 9 * * MON", "timeZone": "Europe/Paris"},
        "quietHours": {"start": "21:00", "end": "08:00"},
    }
    spec.write_text(json.dumps(fields | {"schedule": {"cron": "0 9 * *"}}))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await delivery_commands.manage_campaigns(args("campaigns", "create", address, target=str(spec)))
    assert "campaign.schedule.cron" in refused.value.details()
    spec.write_text(json.dumps(fields))
    capsys.readouterr()
    assert await delivery_commands.manage_campaigns(args("campaigns", "create", address, target=str(spec))) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["campaignId"] == "monday" and created["nextTick"].endswith(("07:00:00Z", "08:00:00Z"))
    await delivery_commands.manage_campaigns(args("campaigns", "list", address))
    assert [json.loads(line)["campaignId"] for line in capsys.readouterr().out.splitlines()] == ["monday"]
    await delivery_commands.manage_campaigns(args("campaigns", "show", address, target="monday"))
    assert json.loads(capsys.readouterr().out)["quietHours"] == {"start": "21:00", "end": "08:00"}

    # update names what it changes: the cron only (the zone stays), the quiet hours cleared.
    change = tmp_path / "change.json"
    change.write_text(json.dumps({"schedule": {"cron": "0 8 * * TUE"}, "quietHours": {}}))
    assert (
        await delivery_commands.manage_campaigns(
            args("campaigns", "update", address, target="monday", file=str(change))
        )
        == 0
    )
    updated = json.loads(capsys.readouterr().out)
    assert updated["schedule"] == {"cron": "0 8 * * TUE", "timeZone": "Europe/Paris"} and "quietHours" not in updated
    change.write_text(json.dumps({"schedule": {"cron": "0 8 * *"}}))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await delivery_commands.manage_campaigns(
            args("campaigns", "update", address, target="monday", file=str(change))
        )
    assert "campaign.schedule.cron" in refused.value.details()
    change.write_text(json.dumps({"campaignId": "other", "name": "x"}))
    with pytest.raises(exits.UsageError, match="names campaign 'other'"):
        await delivery_commands.manage_campaigns(
            args("campaigns", "update", address, target="monday", file=str(change))
        )
    assert await delivery_commands.manage_campaigns(args("campaigns", "pause", address, target="monday")) == 0
    assert "pausedAt" in json.loads(capsys.readouterr().out)
    await delivery_commands.manage_campaigns(args("campaigns", "list", address))
    assert json.loads(capsys.readouterr().out)["pausedAt"]
    assert await delivery_commands.manage_campaigns(args("campaigns", "resume", address, target="monday")) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert "pausedAt" not in resumed and resumed["nextTick"].endswith("07:00:00Z")  # a Tuesday, 08:00 in Paris
    assert await delivery_commands.manage_campaigns(args("campaigns", "delete", address, target="monday")) == 0
    capsys.readouterr()
    await delivery_commands.manage_campaigns(args("campaigns", "list", address))
    assert capsys.readouterr().out == ""
