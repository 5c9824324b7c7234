"""CheckConsents, the batched CheckConsent, on the real service over a real nats-server: bad
batches refused naming the field, every answer as CheckConsent gives it, in order, and a
decision another replica announces (consent.changed) between two batches honoured by the second."""

from __future__ import annotations

import grpc
import pytest

from consent_service.server import MAX_CHECKS
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as pb
from mosaic.testing.plugin import eventually


def question(pid: str, purpose: str = "marketing", **fields) -> pb.CheckConsentRequest:
    return pb.CheckConsentRequest(profile_id=pid, purpose=purpose, **fields)


def decision(pid: str, purpose: str = "marketing", granted: bool = True, **fields) -> pb.SetConsentRequest:
    return pb.SetConsentRequest(
        decision=consent_pb2.ConsentDecision(profile_id=pid, purpose=purpose, granted=granted, **fields)
    )


@pytest.mark.parametrize(
    ("checks", "field"),
    [
        ([], "checks"),
        ([question(f"p-{n}") for n in range(MAX_CHECKS + 1)], "checks"),
        ([question("p-1"), question("p-2", "Not A Name")], "checks[1].purpose"),
        ([question("p-1"), question("")], "checks[1].profile_id"),
        ([question("x" * 257)], "checks[0].profile_id"),
        ([question("p-1", jurisdiction=99)], "checks[0].jurisdiction"),
    ],
)
async def test_a_bad_batch_is_refused_naming_the_field(stub, checks, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckConsents(pb.CheckConsentsRequest(checks=checks))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")


async def test_each_answer_is_checkconsents_own_in_the_order_asked(stub):
    await stub.SetConsent(decision("granted-1"))
    await stub.SetConsent(decision("denied-1", granted=False))
    await stub.SetConsent(decision("g-1", "advertising"))
    await stub.SetConsent(decision("ca-1", "analytics", jurisdiction=consent_pb2.JURISDICTION_CCPA))
    checks = [
        question("denied-1"),
        question("granted-1"),
        question("nobody"),
        question("nobody", jurisdiction=consent_pb2.JURISDICTION_CCPA),
        question("ca-1"),
        question("g-1", "advertising", global_privacy_control=True),
        question("granted-1", "a_purpose_not_configured"),
        question("granted-1"),  # the same question twice
    ]
    batch = await stub.CheckConsents(pb.CheckConsentsRequest(checks=checks))
    one_by_one = [await stub.CheckConsent(check) for check in checks]
    assert list(batch.answers) == one_by_one
    assert [a.granted for a in batch.answers] == [False, True, False, True, True, False, False, True]
    assert batch.answers[1].decision.profile_id == "granted-1"
    assert batch.answers[6].reason == "purpose not configured"


async def test_a_decision_announced_between_two_batches_is_honoured(stub, start_consent):
    checks = pb.CheckConsentsRequest(checks=[question("r-1"), question("r-2")])
    first = await stub.CheckConsents(checks)  # now cached here, for 60 s without a notice
    assert [a.granted for a in first.answers] == [False, False]
    other = await start_consent()  # another replica takes the write; its notice reaches this one
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            await consent_service_pb2_grpc.ConsentServiceStub(channel).SetConsent(decision("r-2"))

        async def second_sees_it() -> bool:
            return [a.granted for a in (await stub.CheckConsents(checks)).answers] == [False, True]

        await eventually(second_sees_it)
    finally:
        await other.stop()
