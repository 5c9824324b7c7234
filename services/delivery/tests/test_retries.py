"""Retries, dead letters and isolation on real servers: a failing destination fills only its
own queue, exhausted jobs land in the dead-letter store, and replay or discard clears it."""

import asyncio
import json

import grpc
import pytest

from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.testing.plugin import eventually
from mosaic.testing.receivers import WebhookReceiver

Status = delivery_pb2.DeliveryStatus


@pytest.fixture
def failing_receiver():
    receiver = WebhookReceiver(status=500).start()
    yield receiver
    receiver.stop()


async def create(stub, receiver, destination_id, **fields):
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id=destination_id,
                webhook_url=receiver.url(f"/{destination_id}"),
                segment_id="vip",
                purpose="marketing",
                **fields,
            )
        )
    )


async def status_of(stub, profile_id):
    records = (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=profile_id))).deliveries
    return {r.destination_id: r for r in records}


async def dead_letters(stub, **selection):
    return list((await stub.ListDeadLetters(pb.ListDeadLettersRequest(**selection))).dead_letters)


async def test_a_5xx_is_retried_within_the_budget_then_dead_lettered_with_the_last_error(
    stub, membership, consent, failing_receiver
):
    await create(stub, failing_receiver, "flaky")
    await consent("p-1")
    await membership("vip", "p-1")
    [letter] = await eventually(lambda: dead_letters(stub))
    assert letter.last_error.startswith("HTTP 500") and letter.delivery.attempts == 3  # MOSAIC_DELIVERY_MAX_ATTEMPTS
    assert len(failing_receiver.requests) == 3
    keys = {r.headers["Idempotency-Key"] for r in failing_receiver.requests}
    assert keys == {letter.delivery.delivery_id}  # every attempt carries the same key
    assert (await status_of(stub, "p-1"))["flaky"].status == Status.DELIVERY_STATUS_DEAD_LETTERED

    got = await stub.GetDeadLetter(
        pb.GetDeadLetterRequest(destination_id="flaky", delivery_id=letter.delivery.delivery_id)
    )
    assert json.loads(got.dead_letter.job.payload)["profile_id"] == "p-1"

    failing_receiver.status = 200  # the endpoint is fixed: replay
    answer = await stub.ReplayDeadLetters(
        pb.ReplayDeadLettersRequest(
            selection=pb.DeadLetterSelection(destination_id="flaky", delivery_ids=[letter.delivery.delivery_id])
        )
    )
    assert answer.replayed == 1
    sent = await eventually(lambda: status_of(stub, "p-1"))
    await eventually(lambda: _sent(stub, "p-1", "flaky"))
    assert await dead_letters(stub) == [] and sent


async def _sent(stub, profile_id, destination_id):
    return (await status_of(stub, profile_id))[destination_id].status == Status.DELIVERY_STATUS_SENT


async def test_a_4xx_is_never_retried(stub, membership, consent, failing_receiver):
    failing_receiver.status = 422
    await create(stub, failing_receiver, "picky")
    await consent("p-2")
    await membership("vip", "p-2")
    [letter] = await eventually(lambda: dead_letters(stub, destination_id="picky"))
    assert letter.last_error == "HTTP 422" and letter.delivery.attempts == 1
    assert len(failing_receiver.requests) == 1


async def test_a_429_waits_the_retry_after_it_was_told(stub, membership, consent, failing_receiver):
    failing_receiver.status = 429
    failing_receiver.answer_headers = {"Retry-After": "1"}
    await create(stub, failing_receiver, "busy")
    await consent("p-3")
    await membership("vip", "p-3")
    await eventually(lambda: len(failing_receiver.requests) >= 2, timeout=30)
    failing_receiver.status = 200
    await eventually(lambda: _sent(stub, "p-3", "busy"), timeout=30)
    # Not a timing assertion: JetStream redelivered at the nak delay, which is Retry-After's.
    assert all(
        r.headers["Idempotency-Key"] == failing_receiver.requests[0].headers["Idempotency-Key"]
        for r in failing_receiver.requests
    )


@pytest.fixture
def patient(delivery_env):
    delivery_env["MOSAIC_DELIVERY_MAX_ATTEMPTS"] = "50"
    delivery_env["MOSAIC_DELIVERY_BREAKER_COOLDOWN_SECONDS"] = "30"


async def test_a_dead_destination_fills_only_its_own_queue(
    patient, stub, membership, consent, webhook_receiver, failing_receiver
):
    failing_receiver.delay = 1.5  # longer than the attempt timeout (1 s): every attempt times out
    await create(stub, webhook_receiver, "healthy")
    await create(stub, failing_receiver, "dead", limits=delivery_pb2.Limits(concurrency=2))
    people = [f"p-{n}" for n in range(40)]
    for person in people:
        await consent(person)
        await membership("vip", person)
    # Every healthy delivery arrives while the dead destination's circuit is open and its jobs wait.
    await eventually(lambda: len({r.body["profile_id"] for r in webhook_receiver.requests}) == len(people), timeout=30)

    async def all_sent():
        statuses = [await status_of(stub, p) for p in people]
        return all(s["healthy"].status == Status.DELIVERY_STATUS_SENT for s in statuses) and statuses

    statuses = await eventually(all_sent)  # recorded a moment after the POST arrived
    assert sum(s["dead"].status == Status.DELIVERY_STATUS_QUEUED for s in statuses) >= len(people) - 5
    # The breaker opened after 5 failures in a row: the dead endpoint saw a handful, not 40.
    assert len(failing_receiver.requests) <= 8


async def test_replay_and_discard_select_by_ids_by_destination_or_all(stub, membership, consent, failing_receiver):
    failing_receiver.status = 400
    await create(stub, failing_receiver, "a")
    await create(stub, failing_receiver, "b")
    for person in ("p-1", "p-2", "p-3"):
        await consent(person)
        await membership("vip", person)
    await eventually(lambda: _count(stub, 6))
    page = await stub.ListDeadLetters(pb.ListDeadLettersRequest(page_size=4))
    rest = await stub.ListDeadLetters(pb.ListDeadLettersRequest(page_size=4, page_token=page.next_page_token))
    listed = [(d.delivery.destination_id, d.delivery.profile_id) for d in [*page.dead_letters, *rest.dead_letters]]
    assert listed == [(d, p) for d in "ab" for p in ("p-1", "p-2", "p-3")] and not rest.next_page_token

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.DiscardDeadLetters(pb.DiscardDeadLettersRequest(selection=pb.DeadLetterSelection()))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.ReplayDeadLetters(
            pb.ReplayDeadLettersRequest(selection=pb.DeadLetterSelection(destination_id="a", delivery_ids=["nope"]))
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    discarded = await stub.DiscardDeadLetters(
        pb.DiscardDeadLettersRequest(selection=pb.DeadLetterSelection(destination_id="a"))
    )
    assert discarded.discarded == 3
    assert (await status_of(stub, "p-1"))["a"].status == Status.DELIVERY_STATUS_DISCARDED
    await consent("p-2", granted=False)  # withdrawn while its letter waited
    failing_receiver.status = 200
    replayed = await stub.ReplayDeadLetters(pb.ReplayDeadLettersRequest(selection=pb.DeadLetterSelection(all=True)))
    assert (replayed.replayed, replayed.suppressed) == (2, 1)
    await eventually(lambda: _sent(stub, "p-3", "b"))
    assert (await status_of(stub, "p-2"))["b"].status == Status.DELIVERY_STATUS_SUPPRESSED
    assert await dead_letters(stub) == []

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ListDeadLetters(pb.ListDeadLettersRequest(page_token="garbage"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in bad.value.details()


async def _count(stub, n):
    return len(await dead_letters(stub)) == n


@pytest.fixture
def hair_trigger(delivery_env):
    delivery_env["MOSAIC_DELIVERY_BREAKER_FAILURES"] = "1"  # one failure opens the circuit
    delivery_env["MOSAIC_DELIVERY_BREAKER_COOLDOWN_SECONDS"] = "5"  # time to queue the probe's job


async def test_a_probe_that_sends_nothing_leaves_the_circuit_to_the_next_job(
    hair_trigger, stub, membership, consent, failing_receiver
):
    failing_receiver.status = 503
    failing_receiver.answer_headers = {"Retry-After": "60"}  # p-0's retry is out of the way
    await create(stub, failing_receiver, "crm")
    await consent("p-0")
    await membership("vip", "p-0")
    await eventually(lambda: failing_receiver.requests)  # one failure: the circuit is open for 5 s
    # The worker's request for jobs made while p-0 was in flight lasts up to 1 s: over by now.
    await asyncio.sleep(1.5)
    # While the circuit is open, p-1's job is queued, then p-1 withdraws: the job the half-open
    # probe takes is suppressed at send time, nothing is sent, the destination gives no verdict.
    await consent("p-1")
    await membership("vip", "p-1")
    await eventually(lambda: _status(stub, "p-1", "crm", Status.DELIVERY_STATUS_QUEUED))
    await consent("p-1", granted=False)
    failing_receiver.status = 200
    await eventually(lambda: _status(stub, "p-1", "crm", Status.DELIVERY_STATUS_SUPPRESSED), timeout=15)
    # The circuit is left to the next job, which probes and goes (a probe left pending for ever
    # kept the circuit shut: nothing was sent again until a restart).
    await consent("p-2")
    await membership("vip", "p-2")
    await eventually(lambda: _status(stub, "p-2", "crm", Status.DELIVERY_STATUS_SENT), timeout=15)
    assert [r.body["profile_id"] for r in failing_receiver.requests] == ["p-0", "p-2"]


async def _status(stub, profile_id, destination_id, status):
    record = (await status_of(stub, profile_id)).get(destination_id)
    return record is not None and record.status == status
