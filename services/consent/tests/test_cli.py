"""`mosaic privacy` against the consent service in-process on a real nats-server."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from mosaic.cli.__main__ import main as mosaic
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as cpb


@pytest.fixture
async def service(start_consent):
    service = await start_consent(MOSAIC_PARTITIONS="2", MOSAIC_PRIVACY_PARTICIPANTS="consent")
    yield service
    await service.stop()


async def test_export_writes_the_document_and_requests_lists_it(service, tmp_path, capsys):
    address = f"127.0.0.1:{service.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        await consent_service_pb2_grpc.ConsentServiceStub(channel).SetConsent(
            cpb.SetConsentRequest(
                decision=consent_pb2.ConsentDecision(profile_id="p-ada", purpose="analytics", granted=True, actor="ada")
            )
        )
    output = tmp_path / "ada.json"
    code = await asyncio.to_thread(
        mosaic,
        [
            "privacy",
            "export",
            "--profile-id",
            "p-ada",
            "--request-id",
            "x-1",
            "--jurisdiction",
            "ccpa",
            "--output",
            str(output),
            "--address",
            address,
        ],
    )
    assert code == 0
    document = json.loads(output.read_text())
    assert document["person_id"] == "p-ada"
    assert [(e["purpose"], e["actor"]) for e in document["consent"]["consent_ledger"]] == [("analytics", "ada")]
    capsys.readouterr()
    assert await asyncio.to_thread(mosaic, ["privacy", "requests", "--all", "--address", address]) == 0
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # not a terminal: JSON
    assert (listed["request_id"], listed["kind"], listed["state"]) == (
        "x-1",
        "PRIVACY_REQUEST_KIND_EXPORT",
        "PRIVACY_REQUEST_STATE_COMPLETED",
    )
    assert 44 < listed["days_left"] <= 45 and listed["waiting_for"] == []
    assert await asyncio.to_thread(mosaic, ["privacy", "requests", "--address", address]) == 0
    assert capsys.readouterr().out == ""  # nothing pending, nothing at risk
    assert await asyncio.to_thread(mosaic, ["privacy", "show", "x-1", "--address", address]) == 0
    assert json.loads(capsys.readouterr().out)["receipts"][0]["participant"] == "consent"


async def test_an_unknown_request_is_named(service, capsys):
    code = await asyncio.to_thread(mosaic, ["privacy", "show", "nope", "--address", f"127.0.0.1:{service.port}"])
    assert code == 1 and "NOT_FOUND: privacy request 'nope' not found" in capsys.readouterr().err


async def test_republish_consent_announces_every_person_again(service, capsys):
    address = f"127.0.0.1:{service.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = consent_service_pb2_grpc.ConsentServiceStub(channel)
        for person in ("p-ada", "p-bob"):
            await stub.SetConsent(
                cpb.SetConsentRequest(decision=consent_pb2.ConsentDecision(profile_id=person, purpose="analytics"))
            )
    assert await asyncio.to_thread(mosaic, ["privacy", "republish-consent", "--address", address]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["persons"] == 2 and answer["run_id"]
