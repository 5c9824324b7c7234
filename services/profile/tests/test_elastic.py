"""Profile replicas as real processes (`mosaic.cli.mesh`) on one nats-server and one embedded
store, scaled while events keep coming: every event is folded exactly once and in order, no
partition is ever leased by two replicas at once, and a replica killed with SIGKILL has its
partitions taken over once its leases expire."""

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import nats

from mosaic.cli.mesh import Mesh
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.config import PlatformSettings
from mosaic.platform.ownership import read_owners
from mosaic.testing.plugin import eventually
from profile_service.store import open_store

PROFILES = 24
LEASE_SECONDS = 3


class Load:
    """What identity would publish: a steady stream of events.resolved over PROFILES people."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: dict[str, list[str]] = {}  # profile -> message ids, in the order sent
        self.count = 0
        self._stop = asyncio.Event()

    async def __aenter__(self) -> "Load":
        self.bus = await Bus.connect(self.url, "identity", 8)
        await self.bus.ensure_streams()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            batch = []
            for _ in range(5):
                profile_id, message_id = f"person-{self.count % PROFILES}", f"e{self.count}"
                event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, event="Viewed", message_id=message_id)
                event.user_id = profile_id
                event.timestamp.GetCurrentTime()
                resolved = resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event)
                batch.append((profile_id, resolved.SerializeToString(), message_id))
                self.sent.setdefault(profile_id, []).append(message_id)
                self.count += 1
            await self.bus.publish_many(topics.EVENTS_RESOLVED, batch)
            await asyncio.sleep(0.05)  # ~100 events a second

    async def stop(self) -> None:
        self._stop.set()
        await self._task

    async def __aexit__(self, *exc) -> None:
        if not self._stop.is_set():
            await self.stop()
        await self.bus.close()


async def owners(url: str) -> dict[int, str]:
    nc = await nats.connect(url)
    try:
        return await read_owners(nc.jetstream(), "profile") or {}
    finally:
        await nc.close()


async def settled_on(url: str, replicas: int) -> bool:
    held = await owners(url)
    return sorted(held) == list(range(8)) and len(set(held.values())) == replicas


def leases(log_dirs: list[Path]) -> list[dict]:
    """Every 'partition acquired' and 'partition released' line the replicas logged."""
    found = []
    for log_dir in log_dirs:
        for line in (log_dir / "profile.log").read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") in ("partition acquired", "partition released"):
                entry["at"] = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
                found.append(entry)
    return found


def assert_one_holder_at_a_time(entries: list[dict]) -> None:
    """Per partition, each lease (member, epoch) is released before the next is acquired, and
    epochs (the fencing tokens) grow from one holder to the next. A lease of a killed replica
    has no release: the next one must come with a larger epoch and after a lapse (clean=false)."""
    by_partition: dict[int, list[dict]] = {}
    for entry in sorted(entries, key=lambda e: (e["at"], e["message"] != "partition released")):
        by_partition.setdefault(entry["partition"], []).append(entry)
    for partition, events in by_partition.items():
        holder = None
        for entry in events:
            if entry["message"] == "partition acquired":
                if holder is not None:
                    assert not entry["clean"], f"partition {partition}: {entry} while {holder} held it"
                    assert entry["epoch"] > holder["epoch"]
                holder = entry
            else:
                assert holder is not None and (entry["member"], entry["epoch"]) == (holder["member"], holder["epoch"])
                holder = None


async def assert_folded_once_in_order(environ: dict[str, str], sent: dict[str, list[str]]) -> None:
    store = await open_store(PlatformSettings.from_env("profile", environ))
    try:
        for profile_id, message_ids in sent.items():
            latest = await store.latest(profile_id)
            assert latest is not None, profile_id
            assert (latest.profile.event_count, latest.profile.version) == (len(message_ids), len(message_ids))
            snapshots = await store.snapshots(profile_id, 1, latest.profile.version)
            assert [s.snapshot.cause_message_id for s in snapshots] == message_ids, profile_id
    finally:
        await store.close()


async def everything_folded(environ: dict[str, str], load: Load) -> bool:
    store = await open_store(PlatformSettings.from_env("profile", environ))
    try:
        for profile_id, message_ids in load.sent.items():
            latest = await store.latest(profile_id)
            if latest is None or latest.profile.event_count < len(message_ids):
                return False
        return True
    finally:
        await store.close()


def environment(nats_server, tmp_path: Path) -> dict[str, str]:
    return {
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_DATA_DIR": str(tmp_path / "data"),  # one store for every replica: one machine
        "MOSAIC_AUTH": "off",
        "MOSAIC_GRACE_SECONDS": "2",
        "MOSAIC_LEASE_SECONDS": str(LEASE_SECONDS),
        "OTEL_TRACES_EXPORTER": "none",
    }


async def test_profile_scales_from_one_to_three_replicas_and_back_under_load(nats_server, tmp_path):
    environ = environment(nats_server, tmp_path)
    replicas = [Mesh(environ, tmp_path / f"replica-{i}") for i in range(3)]
    try:
        await asyncio.to_thread(replicas[0].start_service, "profile")
        async with Load(nats_server.url) as load:
            await asyncio.sleep(2)
            for replica in replicas[1:]:
                await asyncio.to_thread(replica.start_service, "profile")
            await eventually(lambda: settled_on(nats_server.url, 3), timeout=60)
            await asyncio.sleep(2)
            for replica in replicas[1:]:
                assert await asyncio.to_thread(replica.stop_service, "profile") == 0
            await eventually(lambda: settled_on(nats_server.url, 1), timeout=60)
            await asyncio.sleep(2)
            await load.stop()
            await eventually(lambda: everything_folded(environ, load), timeout=120)
    finally:
        for replica in replicas:
            await asyncio.to_thread(replica.stop_service, "profile")
    assert load.count > 500
    await assert_folded_once_in_order(environ, load.sent)
    entries = leases([replica.log_dir for replica in replicas])
    assert len({e["member"] for e in entries}) == 3
    acquired = [e for e in sorted(entries, key=lambda e: e["at"]) if e["message"] == "partition acquired"]
    assert len(acquired) > 8 and all(e["clean"] for e in acquired[8:])  # after the first 8, handovers only
    assert_one_holder_at_a_time(entries)


async def test_a_replica_killed_has_its_partitions_taken_over_after_the_lease_time(nats_server, tmp_path):
    environ = environment(nats_server, tmp_path)
    survivor, doomed = Mesh(environ, tmp_path / "survivor"), Mesh(environ, tmp_path / "doomed")
    try:
        await asyncio.to_thread(survivor.start_service, "profile")
        await asyncio.to_thread(doomed.start_service, "profile")
        async with Load(nats_server.url) as load:
            await eventually(lambda: settled_on(nats_server.url, 2), timeout=60)
            await asyncio.sleep(2)
            (dead,) = {e["member"] for e in leases([doomed.log_dir])}
            lost = {p for p, member in (await owners(nats_server.url)).items() if member == dead}
            killed_at = datetime.now(timezone.utc)
            killed = doomed.processes["profile"]
            killed.kill()  # SIGKILL: no release, no goodbye
            killed.wait()
            await eventually(lambda: settled_on(nats_server.url, 1), timeout=60)
            await asyncio.sleep(2)
            await load.stop()
            await eventually(lambda: everything_folded(environ, load), timeout=120)
    finally:
        await asyncio.to_thread(survivor.stop_service, "profile")
        await asyncio.to_thread(doomed.stop_service, "profile")
    await assert_folded_once_in_order(environ, load.sent)
    entries = leases([survivor.log_dir, doomed.log_dir])
    assert_one_holder_at_a_time(entries)
    taken = [e for e in leases([survivor.log_dir]) if e["message"] == "partition acquired" and e["at"] > killed_at]
    assert lost and {e["partition"] for e in taken} == lost  # the dead replica's, and only those
    assert not any(e["clean"] for e in taken)  # taken once the leases expired, never released
