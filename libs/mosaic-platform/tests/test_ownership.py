"""Elastic ownership: the share computation (pure), then replicas that lease partitions on a real
nats-server, scale from one to three and back under load, hand over cleanly, and fence a lapse."""

import asyncio
import random
import time
from collections import Counter

import nats

from mosaic.events.v1 import event_pb2
from mosaic.platform.bus import Bus
from mosaic.platform.ownership import Lease, Ownership, assign, read_owners
from mosaic.platform.topics import Topic, partition_of
from mosaic.testing.plugin import eventually

TOPIC = Topic("test.events", "TEST_EVENTS", event_pb2.Event)
PARTITIONS = 8


def owners(assignment: dict[str, frozenset[int]]) -> dict[int, str]:
    return {p: member for member, held in assignment.items() for p in held}


def modulo(partitions: int, members: list[str]) -> dict[str, frozenset[int]]:
    """The static split this replaces: member i of n takes p % n == i."""
    names = sorted(members)
    return {m: frozenset(p for p in range(partitions) if p % len(names) == i) for i, m in enumerate(names)}


def test_every_partition_has_one_owner_and_shares_differ_by_one_at_most():
    rng = random.Random(1)
    for partitions in (1, 2, 8, 64, 100):
        for _ in range(100):
            members = [f"replica-{rng.randrange(10**6)}" for _ in range(rng.randint(1, 12))]
            shares = assign(partitions, members)
            assert sorted(p for held in shares.values() for p in held) == list(range(partitions))
            sizes = [len(held) for held in shares.values()]
            assert max(sizes) - min(sizes) <= 1, (partitions, sizes)


def test_every_replica_computes_the_same_assignment_whatever_order_it_sees_members_in():
    members = [f"replica-{i}" for i in range(5)]
    first = assign(PARTITIONS, members)
    for _ in range(10):
        random.shuffle(members)
        assert assign(PARTITIONS, [*members, members[0]]) == first  # order and repeats do not matter


def test_a_member_coming_or_going_moves_little_more_than_its_share():
    """Over random member sets, a join moves at most 1.4 times the partitions the newcomer takes
    (the least possible is exactly its share), and a leave 1.4 times the leaver's; the static
    modulo split moves one and a half times as much as this does, or more."""
    for partitions in (8, 64):
        rng = random.Random(7)
        moved = Counter()
        for _ in range(300):
            members = [f"replica-{rng.randrange(10**6)}" for _ in range(rng.randint(2, min(partitions, 11)))]
            newcomer = members[-1]
            for name, split in (("join", assign), ("modulo", modulo)):
                before, after = owners(split(partitions, members[:-1])), owners(split(partitions, members))
                moved[name] += sum(before[p] != after[p] for p in range(partitions))
            moved["newcomer"] += len(assign(partitions, members)[newcomer])
            leaver = rng.choice(members)
            before = assign(partitions, members)
            after = owners(assign(partitions, [m for m in members if m != leaver]))
            moved["leave"] += sum(after[p] != owner for p, owner in owners(before).items())
            moved["leaver"] += len(before[leaver])
        assert moved["join"] <= 1.4 * moved["newcomer"], moved
        assert moved["leave"] <= 1.4 * moved["leaver"], moved
        assert moved["modulo"] > 1.5 * moved["join"], moved


class Replica:
    """One consuming replica in this process: its own connections, its lease-driven consumers,
    and a record of what it handled: (partition, message id, start, end)."""

    def __init__(self, name: str, url: str, record: list, lease_seconds: float = 3.0) -> None:
        self.name, self.url, self.record, self.lease_seconds = name, url, record, lease_seconds

    async def start(self) -> "Replica":
        self.bus = await Bus.connect(self.url, "tester", PARTITIONS)
        await self.bus.ensure_streams([TOPIC])

        async def handle(message: event_pb2.Event, delivery) -> None:
            started = time.monotonic()
            await asyncio.sleep(random.uniform(0, 0.004))  # a store write
            self.record.append((delivery.partition, self.name, message.message_id, started, time.monotonic()))

        self.bus.consume(TOPIC, handle)
        self.ownership = Ownership(self.bus, "tester", PARTITIONS, self.url, self.lease_seconds, member=self.name)
        await self.ownership.start()
        return self

    async def stop(self) -> None:
        await self.ownership.stop()
        await self.bus.close()


async def settled(url: str, members: int) -> bool:
    """Every partition leased, by exactly `members` distinct replicas."""
    nc = await nats.connect(url)
    try:
        held = await read_owners(nc.jetstream(), "tester")
    finally:
        await nc.close()
    return held is not None and sorted(held) == list(range(PARTITIONS)) and len(set(held.values())) == members


def assert_never_two_at_once(record: list) -> None:
    """Per partition, the spans of handling by different replicas never overlap: each replica's
    handling is cut into runs (a replica may hold a partition more than once), and each run ends
    before the next replica's begins."""
    by_partition: dict[int, list[tuple[float, float, str]]] = {}
    for partition, replica, _, start, end in sorted(record, key=lambda r: r[3]):
        runs = by_partition.setdefault(partition, [])
        if runs and runs[-1][2] == replica:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end), replica)
        else:
            runs.append((start, end, replica))
    for partition, runs in by_partition.items():
        for earlier, later in zip(runs, runs[1:], strict=False):
            assert earlier[1] <= later[0], f"partition {partition}: {earlier[2]} until {earlier[1]}, {later}"


async def test_three_replicas_and_back_to_one_under_load_handle_each_message_once(nats_server):
    record: list = []
    first = await Replica("replica-a", nats_server.url, record).start()
    assert first.ownership.owned == frozenset(range(PARTITIONS))  # alone: all of them from the start
    publisher = await Bus.connect(nats_server.url, "publisher", PARTITIONS)
    sent: list[tuple[str, str]] = []
    stop_load = asyncio.Event()

    async def load() -> None:
        while not stop_load.is_set():
            batch = []
            for _ in range(10):
                key = f"user-{len(sent) % 40}"
                sent.append((key, f"m{len(sent)}"))
                batch.append((key, event_pb2.Event(message_id=sent[-1][1]).SerializeToString(), sent[-1][1]))
            await publisher.publish_many(TOPIC, batch)
            await asyncio.sleep(0.02)

    loading = asyncio.create_task(load())
    others = []
    try:
        await asyncio.sleep(1)
        others = [await Replica(name, nats_server.url, record).start() for name in ("replica-b", "replica-c")]
        await eventually(lambda: settled(nats_server.url, 3), timeout=30)
        assert sorted(len(r.ownership.owned) for r in (first, *others)) == [2, 3, 3]
        await asyncio.sleep(1)
        for replica in others:
            await replica.stop()
        others = []
        await eventually(lambda: settled(nats_server.url, 1), timeout=30)
        await asyncio.sleep(1)
    finally:
        stop_load.set()
        await loading
        for replica in others:
            await replica.stop()
    await eventually(lambda: len(record) >= len(sent), timeout=30)
    await asyncio.sleep(1)  # anything handled twice would come in now
    await first.stop()
    await publisher.close()

    handled = Counter(message_id for _, _, message_id, _, _ in record)
    assert len(sent) > 500 and set(handled) == {message_id for _, message_id in sent}
    assert max(handled.values()) == 1, [m for m, n in handled.items() if n > 1][:10]
    assert {replica for _, replica, _, _, _ in record} == {"replica-a", "replica-b", "replica-c"}
    assert_never_two_at_once(record)
    # Each key's messages were handled in the order they were sent, across every handover.
    order = {message_id: index for index, (_, message_id) in enumerate(sent)}
    by_key: dict[str, list[int]] = {}
    for _, _, message_id, _, _ in sorted(record, key=lambda r: r[3]):
        by_key.setdefault(sent[order[message_id]][0], []).append(order[message_id])
    assert all(indexes == sorted(indexes) for indexes in by_key.values())


async def test_a_partition_taken_over_gets_a_larger_epoch(nats_server):
    record: list = []
    first = await Replica("replica-a", nats_server.url, record).start()
    epochs = {p: lease.epoch for p, lease in first.ownership.leases.items()}
    second = await Replica("replica-b", nats_server.url, record).start()

    async def taken_over() -> bool:
        # The store can say two replicas share the partitions a moment before the second one's
        # own view of its leases says so: wait for both.
        return await settled(nats_server.url, 2) and bool(second.ownership.leases)

    await eventually(taken_over, timeout=30)
    moved = second.ownership.leases
    assert moved and all(lease.epoch > epochs[p] and lease.clean for p, lease in moved.items())
    await second.stop()
    await first.stop()


async def test_a_replica_whose_lease_lapses_stops_before_acking(nats_server):
    """A holder that cannot renew (here: its lease simply runs out, as when it is paused or cut
    off) finishes nothing more: the message in hand is given back unacked, and nothing else of
    the partition is started."""
    bus = await Bus.connect(nats_server.url, "tester", PARTITIONS)
    await bus.ensure_streams([TOPIC])
    key = next(f"k{i}" for i in range(100) if partition_of(f"k{i}", PARTITIONS) == 0)
    for i in range(3):
        await bus.publish(TOPIC, key, event_pb2.Event(message_id=f"m{i}"), f"m{i}")
    started: list[str] = []

    async def slow(message: event_pb2.Event, delivery) -> None:
        started.append(message.message_id)
        await asyncio.sleep(1.0)  # the lease lapses meanwhile

    bus.consume(TOPIC, slow)
    lease = Lease(0, epoch=1, revision=1, valid_until=time.monotonic() + 0.5, clean=True)
    bus.start_partition(0, lease)
    await eventually(lambda: started, timeout=10)
    await asyncio.sleep(1.5)
    await bus.stop_partition(0)
    assert started == ["m0"]  # one in hand when it lapsed; the others never started
    info = await bus.jetstream.consumer_info(TOPIC.stream, "tester-0")
    assert info.ack_floor.stream_seq == 0  # nothing acked: the next holder does it all
    await bus.close()


async def test_a_replica_cut_off_from_nats_stops_and_takes_its_partitions_back_after(nats_server):
    """NATS goes away for longer than a lease may go unrenewed: every partition stops (nothing
    is processed or acked unfenced); once NATS is back the replica takes its leases again and
    what was published meanwhile is handled once, in order."""
    record: list = []
    replica = await Replica("replica-a", nats_server.url, record).start()
    publisher = await Bus.connect(nats_server.url, "publisher", PARTITIONS)
    key = "user-1"
    await publisher.publish(TOPIC, key, event_pb2.Event(message_id="before"), "before")
    await eventually(lambda: len(record) == 1, timeout=10)
    # Its ack reached JetStream before the cut: an ack lost in flight is a redelivery, which the
    # bus allows (at least once) and the services' markers absorb; not what this test is about.
    durable = f"tester-{record[0][0]}"

    async def acked() -> bool:
        info = await publisher.jetstream.consumer_info(TOPIC.stream, durable)
        return info.num_ack_pending == 0 and info.ack_floor.stream_seq >= 1

    await eventually(acked, timeout=10)
    nats_server.stop()
    await eventually(lambda: not replica.ownership.owned, timeout=10)  # lapsed: 0.6 of 3 s
    nats_server.start()
    await eventually(lambda: replica.ownership.owned == frozenset(range(PARTITIONS)), timeout=60)
    for i in range(20):
        await publisher.publish(TOPIC, key, event_pb2.Event(message_id=f"after-{i}"), f"after-{i}")
    await eventually(lambda: len(record) == 21, timeout=30)
    await asyncio.sleep(0.5)
    await replica.stop()
    await publisher.close()
    assert [message_id for _, _, message_id, _, _ in record] == ["before", *(f"after-{i}" for i in range(20))]
