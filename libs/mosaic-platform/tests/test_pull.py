"""The puller against a real nats-server: what a fetch returns, when, and that nothing is sent
after it returned."""

import asyncio
import time

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import api

from mosaic.platform.consumer import delivered
from mosaic.platform.pull import Puller

SUBJECTS = "pull.0.*"


async def bound(nats_server, **config):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="PULL", subjects=["pull.>"])
    settings = api.ConsumerConfig(
        durable_name="puller-0", filter_subject=SUBJECTS, ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=256
    )
    late: list = []
    return nc, js, await Puller.bind(js, nc, "PULL", settings.evolve(**config), late.append)


async def publish(js, count, start=0):
    for i in range(start, start + count):
        await js.publish(f"pull.0.k{i % 3}", f"m{i}".encode())


async def test_a_fetch_takes_what_is_waiting_up_to_the_batch_in_stream_order(nats_server):
    nc, js, puller = await bound(nats_server)
    await publish(js, 5)
    first = await puller.fetch(3, 1)
    rest = await puller.fetch(10, 1)
    assert [m.data for m in first] == [b"m0", b"m1", b"m2"]
    assert [m.data for m in rest] == [b"m3", b"m4"]
    assert [m.subject for m in rest] == ["pull.0.k0", "pull.0.k1"]  # the subject published to
    assert await puller.fetch(10, 0.3) == []
    await nc.close()


async def test_a_fetch_after_a_lull_returns_the_first_message_without_waiting_for_a_batch(nats_server):
    nc, js, puller = await bound(nats_server)
    started = time.monotonic()
    fetching = asyncio.create_task(puller.fetch(64, 10))
    await asyncio.sleep(0.3)
    await publish(js, 1)
    taken = await fetching
    assert [m.data for m in taken] == [b"m0"]
    # It came back with the message, not at the request's expiry ten seconds on.
    assert time.monotonic() - started < 5
    await nc.close()


async def test_nothing_is_sent_to_the_puller_after_its_fetch_returned(nats_server):
    # (a message sent after a request was over would be lost to a consumer stopping then)
    nc, js, puller = await bound(nats_server)
    assert await puller.fetch(64, 0.3) == []  # the request expired, empty
    await publish(js, 3)
    await asyncio.sleep(0.5)
    info = await js.consumer_info("PULL", "puller-0")
    assert info.num_ack_pending == 0 and info.num_pending == 3  # all three still wait at the server
    assert len(await puller.fetch(64, 1)) == 3
    await nc.close()


async def test_a_fetch_of_a_deleted_consumer_fails_instead_of_waiting_quietly(nats_server):
    nc, js, puller = await bound(nats_server)
    await js.delete_consumer("PULL", "puller-0")
    with pytest.raises(nats.errors.TimeoutError):  # JetStream answers no request of it
        await puller.fetch(10, 1)
    await nc.close()


async def test_a_request_hands_each_message_over_as_it_comes_and_says_how_it_ended(nats_server):
    nc, js, puller = await bound(nats_server)
    await publish(js, 2)
    handed: list = []
    assert await puller.request(5, 0, handed.append) == (2, "408")  # fewer than asked: ended short
    assert await puller.request(5, 0, handed.append) == (0, "404")  # none waiting
    await publish(js, 2, start=2)
    assert await puller.request(2, 0, handed.append) == (2, "")  # all it asked for
    assert [m.data for m in handed] == [b"m0", b"m1", b"m2", b"m3"]
    await nc.close()


async def test_a_refused_request_raises_what_jetstream_said(nats_server):
    nc, js, puller = await bound(nats_server, max_waiting=1)
    other = await Puller.bind(js, nc, "PULL", api.ConsumerConfig(durable_name="puller-0"), print)
    waiting = asyncio.create_task(other.fetch(1, 3))  # holds the one waiting request
    await asyncio.sleep(0.3)
    with pytest.raises(nats.js.errors.APIError) as refused:
        await puller.fetch(10, 1)
    assert refused.value.code == 409 and "MaxWaiting" in refused.value.description
    waiting.cancel()
    await nc.close()


async def test_a_fetch_refused_for_older_requests_waits_instead_of_coming_back_at_once(nats_server):
    """JetStream refuses a no_wait request with 408 "Requests Pending" while older requests of
    the consumer ask for more than it counts pending (here: another replica's, held back by the
    ack pending limit). The fetch then waits for its messages: returning at once, empty, had the
    consumer ask again and again, a loop of requests at full speed."""
    nc, js, puller = await bound(nats_server, max_ack_pending=2)
    await publish(js, 3)
    assert len(await puller.fetch(2, 1)) == 2  # not acked: the limit is reached
    other = await Puller.bind(js, nc, "PULL", api.ConsumerConfig(durable_name="puller-0"), print)
    waiting = asyncio.create_task(other.request(10, 5, print))  # an older request for 10
    await asyncio.sleep(0.3)
    third = await Puller.bind(js, nc, "PULL", api.ConsumerConfig(durable_name="puller-0"), print)
    started = time.monotonic()
    assert await third.fetch(10, 1) == []
    assert time.monotonic() - started >= 0.8  # it waited out its second, not refused and back
    assert third._requests == 2  # the refused request, then a wait
    waiting.cancel()
    await nc.close()


async def test_a_fetch_takes_those_waiting_and_the_first_to_come_in_one_request(nats_server):
    nc, js, puller = await bound(nats_server)
    await publish(js, 2)
    assert len(await puller.fetch(10, 1)) == 2
    fetching = asyncio.create_task(puller.fetch(10, 5))
    await asyncio.sleep(0.3)
    await publish(js, 1, start=2)
    assert [m.data for m in await fetching] == [b"m2"]
    assert puller._requests == 2  # one request each, whether messages waited or came later
    await nc.close()


async def test_binding_keeps_an_existing_consumer_and_its_position(nats_server):
    nc, js, puller = await bound(nats_server)
    await publish(js, 4)
    for msg in await puller.fetch(2, 1):
        await msg.ack()
    await puller.close()
    again = await Puller.bind(js, nc, "PULL", api.ConsumerConfig(durable_name="puller-0", ack_wait=99.0), print)
    assert [m.data for m in await again.fetch(10, 1)] == [b"m2", b"m3"]
    info = await js.consumer_info("PULL", "puller-0")
    assert info.config.ack_wait != 99.0  # an existing consumer keeps its configuration
    await nc.close()


async def test_binding_raises_an_existing_consumers_ack_pending_limit_to_the_batch_asked_for(nats_server):
    """A consumer made when the bus fetched 64 at a time (limit 128) serves fetches of 256 once
    bound again with the new limit, its position and its other settings kept."""
    nc, js, puller = await bound(nats_server, max_ack_pending=128, ack_wait=30.0)
    await publish(js, 300)
    for msg in await puller.fetch(2, 1):
        await msg.ack()
    await puller.close()
    wanted = api.ConsumerConfig(durable_name="puller-0", filter_subject=SUBJECTS, max_ack_pending=512, ack_wait=5.0)
    again = await Puller.bind(js, nc, "PULL", wanted, print)
    taken = await again.fetch(256, 1)
    assert len(taken) == 256 and taken[0].data == b"m2"
    info = await js.consumer_info("PULL", "puller-0")
    assert info.config.max_ack_pending == 512
    assert info.config.ack_wait == 30.0  # the rest is kept
    await nc.close()


async def test_the_delivered_fields_read_off_the_reply_are_what_nats_py_parses_there(nats_server):
    """The consumer reads a message's stream sequence and deliveries off its reply subject
    itself (nats-py's `metadata` costs ~6 µs a message); both forms of the subject agree with it:
    the server's here, and the form with a domain and account hash."""
    nc, js, puller = await bound(nats_server)
    await publish(js, 3)
    await puller.fetch(2, 1)  # taken, not acked: delivered again below
    await asyncio.sleep(0)
    messages = []
    for msg in await puller.fetch(3, 1):
        messages.append(msg)
        await msg.nak()
    messages += await puller.fetch(3, 1)
    assert [delivered(m.reply) for m in messages] == [
        (m.metadata.sequence.stream, m.metadata.num_delivered) for m in messages
    ]
    assert {delivered(m.reply)[1] for m in messages} == {1, 2}  # the nak'd ones came again
    with_domain = "$JS.ACK.hub.ACCHASH.PULL.puller-0.3.41.17.1733590000000000000.5.tok"
    meta = Msg.Metadata._from_reply(with_domain)
    assert delivered(with_domain) == (meta.sequence.stream, meta.num_delivered) == (41, 3)
    await nc.close()
