"""The profile service as a process: killed mid-load and restarted, it loses nothing and
doubles nothing (the store on Cassandra, the bus a real nats-server)."""

import asyncio

from mosaic.cli.mesh import Mesh
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.config import PlatformSettings
from mosaic.testing.plugin import eventually
from profile_service.store import open_store

EVENTS, PROFILES = 800, 10


async def test_a_killed_profile_service_resumes_without_losing_or_doubling(tmp_path, nats_server, cassandra_keyspace):
    env = {
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_STORE": "cassandra",
        "MOSAIC_PARTITIONS": "2",
        "MOSAIC_AUTH": "off",
        "MOSAIC_CASSANDRA_PORT": str(cassandra_keyspace.port),
        "MOSAIC_CASSANDRA_KEYSPACE": cassandra_keyspace.keyspace,
        "OTEL_SDK_DISABLED": "true",
    }
    settings = PlatformSettings.from_env("test", env)
    bus = await Bus.connect(nats_server.url, "test", 2)
    await bus.ensure_streams()
    mesh = Mesh(env, tmp_path / "logs")
    mesh.start_service("profile")
    try:
        for i in range(EVENTS):
            event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, event="Clicked", user_id="u", message_id=f"m{i}")
            event.timestamp.GetCurrentTime()
            profile_id = f"p{i % PROFILES}"
            await bus.publish(
                topics.EVENTS_RESOLVED,
                profile_id,
                resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event),
                f"m{i}",
            )

        async def updates() -> int:
            return (await bus._js.stream_info(topics.PROFILE_UPDATED.stream)).state.messages

        await eventually(lambda: _at_least(updates, 50))
        mesh.processes["profile"].kill()  # no graceful stop: whatever was in hand is cut off
        mesh.processes.pop("profile").wait()
        assert await updates() < EVENTS, "killed in the middle of the load"
        mesh.start_service("profile")
        try:
            await eventually(lambda: _at_least(updates, EVENTS), timeout=60)
        except AssertionError:
            raise AssertionError(f"only {await updates()} updates") from None

        store = await open_store(settings)
        try:
            total = 0
            for p in range(PROFILES):
                profile = (await store.latest(f"p{p}")).profile
                total += profile.event_count
                assert profile.version == profile.event_count == EVENTS // PROFILES
                versions = [s.snapshot.version for s in await store.snapshots(f"p{p}", 1, profile.version)]
                assert versions == list(range(1, profile.version + 1)), "one snapshot per version, no gaps"
            assert total == EVENTS
        finally:
            await store.close()
        await asyncio.sleep(0.5)
        assert await updates() == EVENTS, "profile.updated once per change"
    finally:
        mesh.stop()
        await bus.close()


async def _at_least(count, n) -> bool:
    return await count() >= n
