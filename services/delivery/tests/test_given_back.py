"""Jobs a worker fetched and could not finish come back at once, not after their ack wait, on a
real nats-server: an audience job that reaches the worker after it gave its pull request up (the
request's answer held back on the wire) goes in the next batch; a job whose handling fails on a
transient error (here the erasure lookup, which reads the store when memory is incomplete) is
nak'ed and goes on its next delivery. The ack wait is 25 s here (MOSAIC_WEBHOOK_TIMEOUT_SECONDS
10), so a job left to it would miss every deadline below."""

from __future__ import annotations

import logging

import nats
import nats.js.errors
import pytest

from delivery_service.jobs import JOBS, JobQueue, durable_of
from delivery_service.privacy import ErasedPeople
from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.platform.errors import Unavailable
from mosaic.testing.plugin import eventually
from mosaic.testing.relay import Link

from .test_channels import records

Status = delivery_pb2.DeliveryStatus


@pytest.fixture
def long_ack_wait(delivery_env):
    delivery_env["MOSAIC_WEBHOOK_TIMEOUT_SECONDS"] = "10"  # ack wait 2 * 10 + 5 s


@pytest.fixture
async def stall(long_ack_wait, delivery_env, nats_server):
    """The delivery service's NATS connections go through a relay that can hold back what the
    server sends (the server goes on: it hands a job to a pull request the client does not hear of)."""
    relay = Link(nats_server.url)
    delivery_env["MOSAIC_NATS_URL"] = await relay.start()
    yield relay
    await relay.close()


@pytest.fixture
async def nc(nats_server):
    """A connection of the test's own, straight to the server."""
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


@pytest.fixture
def queue(nc, nats_server):
    return JobQueue(nc, nats_server.url)


def destination(receiver, kind: delivery_pb2.DestinationKind) -> pb.CreateDestinationRequest:
    return pb.CreateDestinationRequest(
        destination=delivery_pb2.Destination(
            destination_id="ads", kind=kind, segment_id="vip", webhook_url=receiver.url("/ads"), purpose="marketing"
        )
    )


def removal(profile_id: str) -> delivery_pb2.DeliveryJob:
    """A job as the planner queues it for a person leaving the segment (no consent needed)."""
    return delivery_pb2.DeliveryJob(
        delivery_id=f"ads:{profile_id}:exit",
        destination_id="ads",
        profile_id=profile_id,
        trigger="segment.exited:vip",
        segment_id="vip",
        exited=True,
        payload='{"left": "vip"}',
    )


async def consumer(nc):
    try:
        return await nc.jetstream().consumer_info(JOBS.stream, durable_of("ads"))
    except nats.js.errors.NotFoundError:
        return None


async def waiting(nc) -> bool:
    info = await consumer(nc)
    return info is not None and info.num_waiting > 0


async def handed_over(nc) -> bool:
    info = await consumer(nc)
    return info is not None and info.num_ack_pending == 1


async def test_an_audience_job_that_comes_after_its_request_was_given_up_goes_in_the_next_batch(
    stall, nc, queue, stub, webhook_receiver, caplog
):
    await stub.CreateDestination(destination(webhook_receiver, delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC))
    await eventually(lambda: waiting(nc))  # the worker's pull requests reach the server
    stall.hold()
    await queue.put(removal("p-1"))
    await eventually(lambda: handed_over(nc))  # to the worker's open request, whose answer is held

    def given_up() -> int:
        return sum(r.getMessage().startswith("queue of ads:") for r in caplog.records)

    before = given_up()
    await eventually(lambda: given_up() > before)  # a request given up: the worker waits 1 s before the next
    stall.release()  # the job reaches the worker while it has no request open
    await eventually(lambda: webhook_receiver.requests, timeout=10)
    assert [r.body for r in webhook_receiver.requests] == [{"audience": "vip", "add": [], "remove": ["p-1"]}]
    record = (await eventually(lambda: records(stub, "p-1")))["ads"]
    assert (record.status, record.attempts) == (Status.DELIVERY_STATUS_SENT, 1)  # not given back: none spent


@pytest.fixture
def lookup_fails_once(monkeypatch, caplog):
    """The first erasure lookup raises Unavailable, as the store's read does while Cassandra does
    not answer (it is read when memory holds too many tombstones to be complete)."""
    caplog.set_level(logging.WARNING, "mosaic.delivery.worker")
    failed: list[str] = []
    lookup = ErasedPeople.erased

    async def erased(self: ErasedPeople, profile_id: str) -> bool:
        if not failed:
            failed.append(profile_id)
            raise Unavailable("store", "the tombstones did not answer")
        return await lookup(self, profile_id)

    monkeypatch.setattr(ErasedPeople, "erased", erased)
    return failed


@pytest.mark.parametrize(
    "kind",
    [delivery_pb2.DESTINATION_KIND_WEBHOOK, delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC],
    ids=["webhook", "audience"],
)
async def test_a_job_whose_handling_fails_on_a_transient_error_is_given_back_and_goes_at_once(
    kind, long_ack_wait, lookup_fails_once, queue, stub, webhook_receiver, caplog
):
    await stub.CreateDestination(destination(webhook_receiver, kind))
    await queue.put(removal("p-1"))
    await eventually(lambda: webhook_receiver.requests, timeout=10)
    record = (await eventually(lambda: records(stub, "p-1")))["ads"]
    assert lookup_fails_once == ["p-1"]
    # Sent once, on a later attempt (a busy machine may give it back once more, on a NATS timeout).
    assert (record.status, len(webhook_receiver.requests)) == (Status.DELIVERY_STATUS_SENT, 1)
    assert record.attempts >= 2
    given = [r.fields for r in caplog.records if r.getMessage() == "jobs given back"]
    assert {
        "destination_id": "ads",
        "jobs": 1,
        "given_back": 1,
        "error": repr(Unavailable("store", "the tombstones did not answer")),
    } in given


@pytest.mark.parametrize(
    "kind",
    [delivery_pb2.DESTINATION_KIND_WEBHOOK, delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC],
    ids=["webhook", "audience"],
)
async def test_a_message_in_the_queue_that_is_not_a_job_is_terminated_and_the_worker_goes_on(
    kind, long_ack_wait, nc, queue, stub, webhook_receiver, caplog
):
    await stub.CreateDestination(destination(webhook_receiver, kind))
    await eventually(lambda: waiting(nc))
    # Field 1 with a length past the end: no protobuf parser takes it, so it never would.
    await nc.jetstream().publish(f"{JOBS.name}.ads.p-0", b"\x0a\xff", headers={"Nats-Msg-Id": "garbage"})
    await queue.put(removal("p-1"))
    await eventually(lambda: webhook_receiver.requests, timeout=10)
    await queue.put(removal("p-2"))  # and the worker is still there for the next one
    await eventually(lambda: len(webhook_receiver.requests) == 2, timeout=10)
    assert [r.fields["subject"] for r in caplog.records if r.getMessage() == "not a delivery job: terminated"] == [
        f"{JOBS.name}.ads.p-0"
    ]

    async def settled() -> bool:  # nothing left pending: the bad message is not waiting to come back
        info = await consumer(nc)
        return info is not None and info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(settled)
