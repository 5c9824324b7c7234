"""The demo's waiting on a real nats-server: what is queued per stage, progress, and giving up."""

from __future__ import annotations

import io

import nats
import pytest
from nats.js.api import ConsumerConfig

from mosaic.cli.backlog import DemoStalled, Idle, Waiter, queued
from mosaic.testing.nats_server import NatsServer
from mosaic.testing.plugin import eventually


async def _queue_raw_events(url: str, count: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="EVENTS_RAW", subjects=["events.raw.*"])
    await js.add_consumer("EVENTS_RAW", ConsumerConfig(durable_name="identity-0", filter_subject="events.raw.0"))
    await js.add_consumer("EVENTS_RAW", ConsumerConfig(durable_name="other-0", filter_subject="events.raw.0"))
    for _ in range(count):
        await js.publish("events.raw.0", b"x")
    await nc.close()


async def test_queued_counts_each_stage_s_own_consumers(nats_server: NatsServer) -> None:
    await _queue_raw_events(nats_server.url, 3)
    assert await queued(nats_server.url) == {"identity": 3, "profile": 0, "segmentation": 0, "delivery": 0}


async def test_the_waiter_returns_the_answer_once_it_comes(nats_server: NatsServer) -> None:
    calls = []

    async def check():
        calls.append(1)
        return len(calls) >= 3 and "done"

    assert await Waiter(nats_server.url, out=io.StringIO()).until("three calls", check) == "done"


async def test_the_waiter_shows_the_backlog_and_gives_up_when_nothing_moves(nats_server: NatsServer) -> None:
    await _queue_raw_events(nats_server.url, 5)
    out = io.StringIO()

    async def never():
        return None

    with pytest.raises(DemoStalled, match="identity 5"):
        await Waiter(nats_server.url, stall_seconds=1.0, out=out).until("the impossible", never)
    assert "waiting" in out.getvalue() and "for the impossible; queued ahead: identity 5, profile 0" in out.getvalue()


async def test_the_mesh_is_idle_only_once_nothing_is_queued_anywhere(nats_server: NatsServer) -> None:
    await _queue_raw_events(nats_server.url, 2)
    async with Idle(nats_server.url, settle=0.05) as idle:
        assert not await idle()
        nc = await nats.connect(nats_server.url)
        sub = await nc.jetstream().pull_subscribe("events.raw.0", durable="identity-0", stream="EVENTS_RAW")
        for msg in await sub.fetch(2, timeout=5):
            await msg.ack()
        await nc.flush()
        await nc.close()
        # JetStream applies acks a moment after they arrive; other-0's two messages stay pending.
        await eventually(idle, timeout=10)  # another program's durable (other-0) is no work of the mesh
