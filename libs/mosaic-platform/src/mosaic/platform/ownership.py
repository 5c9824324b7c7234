"""Elastic ownership of partitions: leases with fencing in JetStream's key-value store.

Every replica of a consuming service is a *member*: it heartbeats `members.<id>` in its
service's bucket `mosaic-ownership-<service>`, whose TTL is the lease time
(MOSAIC_LEASE_SECONDS). From the live members each replica computes the same assignment
(`assign`: balanced, deterministic, few moves when a member comes or goes) and holds a *lease*
on each partition of its share: the key `partitions.<p>`, created by compare-and-set only when
nobody holds it, and renewed by compare-and-set on the revision it last wrote. The revision that
created a lease is its epoch, the fencing token: it grows with every new holder.

- Handing over: the holder stops its consumers of the partition (they finish the batch in hand
  and give back the rest), waits for the partition's background work, flushes its acks, then
  deletes the lease (compare-and-set once more); the new owner's create succeeds only then.
- A holder that dies stops renewing: the bucket's TTL removes its membership and its leases, and
  each partition goes to the member the assignment now names, which first lets the dead
  holder's unacked messages come back (see `Consumer._settle` in
  `mosaic.platform.consumer`).
- Fencing: a holder counts its lease valid for `VALID` of the TTL from the moment it sent its
  last successful renewal, well before the server, which keeps it a whole TTL from receiving it,
  lets anyone else take it. The bus checks the lease before every batch and every ack (a clock
  read, no I/O), so a replica that could not renew (paused, cut off) stops processing and acking
  before another holder starts. Stores are protected by the handlers' idempotency, not by the
  token: what a holder wrote before it stopped is found done by the next one.

Nothing here runs per message: a replica writes one heartbeat and one renewal per lease every
`tick` (a fifth of the TTL), and acts only when the members or the leases change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import nats
import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue

from mosaic.platform import metrics, tasks
from mosaic.platform.nats_connection import settling

if TYPE_CHECKING:
    from mosaic.platform.bus import Bus

log = logging.getLogger("mosaic.ownership")

VALID = 0.6  # of the TTL: how long after sending a renewal a holder still counts its lease held
_WRONG_LAST = 10071  # JetStream: the key's last revision is not the one named
_DOWN = (nats.errors.Error, asyncio.TimeoutError)  # NATS unreachable or slow: try again next tick
START_PATIENCE = 30.0  # seconds the first heartbeat is written again while the bucket settles

Follower = Callable[[frozenset[int]], Awaitable[None]]


def member_id() -> str:
    """A name for this process, unique across restarts: host (the pod's name), pid, random."""
    name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _score(member: str, partition: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=64)
def _assign(partitions: int, members: tuple[str, ...]) -> dict[str, frozenset[int]]:
    base, extra = divmod(partitions, len(members))
    held: dict[str, set[int]] = {member: set() for member in members}
    taken: set[int] = set()
    fuller = 0  # members that took base + 1
    pairs = sorted(((_score(m, p), p, m) for m in members for p in range(partitions)), reverse=True)
    for _, partition, member in pairs:
        if partition in taken:
            continue
        count = len(held[member])
        if count < base or (count == base and fuller < extra):
            fuller += count == base
            held[member].add(partition)
            taken.add(partition)
    return {member: frozenset(owned) for member, owned in held.items()}


def assign(partitions: int, members: Iterable[str]) -> dict[str, frozenset[int]]:
    """Each member's partitions, the same on every replica that sees the same members.

    Rendezvous hashing with bounded loads: every (member, partition) pair has a hash score, and
    the pairs are taken from the highest down, each partition going to the first member with room.
    Room is `partitions // members` for everyone and one more for the first `partitions % members`
    members that need it, so shares differ by one at most. A partition stays with the member it
    scores highest with unless that member is full, so a member that comes or goes moves little
    more than its own share (tests/test_ownership.py measures it)."""
    names = tuple(sorted(set(members)))
    return _assign(partitions, names) if names else {}


class HeldPartitions(Protocol):
    """What background work per partition needs to know: the partitions held now, and a way to
    work on one without its being handed over meanwhile (`Ownership`, `FixedPartitions`)."""

    owned: frozenset[int]

    def working(self, partition: int) -> AbstractAsyncContextManager[bool]: ...


class FixedPartitions:
    """Partitions held for good, with the `owned` and `working` of `Ownership`: for the parts of
    a service built without a mesh around them (a test, a benchmark)."""

    def __init__(self, partitions: Iterable[int]) -> None:
        self.owned = frozenset(partitions)

    @asynccontextmanager
    async def working(self, partition: int) -> AsyncIterator[bool]:
        yield partition in self.owned


@dataclass
class Lease:
    """This replica's hold on one partition."""

    partition: int
    epoch: int  # the revision that created it: the fencing token, larger for every new holder
    revision: int  # the last revision written (renewals compare-and-set on it)
    valid_until: float  # time.monotonic() past which this replica must not process or ack
    clean: bool  # taken after its previous holder released it (not after an expiry)
    acquired_at: float = field(default_factory=time.monotonic)
    releasing: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def held(self) -> bool:
        return time.monotonic() < self.valid_until


class Ownership:
    """One replica's membership of its service and its leases; `start` once the service has
    registered its consumers, `stop` at shutdown (it hands every partition over first)."""

    def __init__(
        self,
        bus: Bus,
        service: str,
        partitions: int,
        nats_url: str,
        lease_seconds: float = 10.0,
        secure: Mapping[str, Any] | None = None,
        stream_replicas: int = 1,
        member: str | None = None,
    ) -> None:
        self.bus = bus
        self.service = service
        self.partitions = partitions
        self.nats_url = nats_url
        self.secure = dict(secure or {})
        self.stream_replicas = stream_replicas
        self.ttl = lease_seconds
        self.tick = lease_seconds / 5
        self.member = member or member_id()
        self.bucket = f"mosaic-ownership-{service}"
        self.leases: dict[int, Lease] = {}
        self.owned: frozenset[int] = frozenset()  # leased and being consumed
        self.members: frozenset[str] = frozenset({self.member})
        self._heard: dict[str, float] = {}  # member -> when its last heartbeat was heard (monotonic)
        self._followers: list[tuple[Follower | None, Follower | None]] = []
        self._member_listeners: list[Callable[[frozenset[str]], None]] = []
        self._busy: dict[int, int] = {}
        self._idle: dict[int, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = False
        self._background: list[asyncio.Task[None]] = []  # renewals and the watch
        self._reconciling: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()  # of lapsed leases
        self._watched_at = 0.0  # when the watch last delivered anything (our own heartbeats pass there)
        self._nc: nats.NATS | None = None
        self._kv: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    # What services use

    def follow(self, acquired: Follower | None = None, released: Follower | None = None) -> None:
        """Call `acquired(partitions)` after leases are taken and before their consumers start
        (load what the partitions need), `released(partitions)` after their consumers and
        background work stopped and before the leases go (forget what only an owner may keep)."""
        self._followers.append((acquired, released))

    def on_members(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call `listener(members)` now and whenever the live members change."""
        self._member_listeners.append(listener)
        listener(self.members)

    @asynccontextmanager
    async def working(self, partition: int) -> AsyncIterator[bool]:
        """Background work on a partition (timers, backfills): yields whether it is owned now,
        and a release of the partition waits until the work is done."""
        if partition not in self.owned:
            yield False
            return
        self._busy[partition] = self._busy.get(partition, 0) + 1
        self._idle.setdefault(partition, asyncio.Event()).clear()
        try:
            yield True
        finally:
            self._busy[partition] -= 1
            if not self._busy[partition]:
                self._idle[partition].set()

    # Life cycle

    async def start(self) -> None:
        """Join, take this replica's share of what is free, and keep at it in the background."""
        # A connection of its own: renewals must not queue behind the bus's publishes.
        self._nc = await nats.connect(
            self.nats_url,
            name=f"{self.service}-ownership",
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            **self.secure,
        )
        self._kv = await self._bucket(self._nc.jetstream(timeout=5))
        # Heartbeat before watching: whoever watches from now on sees this member, and the
        # watch shows every member that heartbeat before.
        async for attempt in settling(START_PATIENCE):
            with attempt:
                await self._heartbeat()
        await self._watch()
        self._background = [asyncio.create_task(self._renew_forever()), asyncio.create_task(self._watch_forever())]
        await self._reconcile()
        self._reconciling = asyncio.create_task(self._reconcile_forever())
        _ACTIVE.add(self)

    async def stop(self) -> None:
        """Leave: the others take over each partition as soon as it is released."""
        if self._stopped or self._kv is None:
            return
        self._stopped = self._stopping = True
        _ACTIVE.discard(self)
        self._wake.set()
        if self._reconciling is not None:
            await asyncio.gather(self._reconciling, return_exceptions=True)  # its round in hand first
        try:
            await self._store.delete(f"members.{self.member}")
        except _DOWN as error:
            log.warning("membership not withdrawn (it expires): %r", error)
        await self._release(set(self.leases))
        await asyncio.gather(*self._releases, return_exceptions=True)
        await tasks.cancel(*self._background)
        await self._unwatch()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    @property
    def _store(self) -> KeyValue:
        assert self._kv is not None, "Ownership.start() first"
        return self._kv

    async def _bucket(self, js: Any) -> KeyValue:
        config = api.KeyValueConfig(
            bucket=self.bucket, history=1, ttl=self.ttl, replicas=self.stream_replicas, storage=api.StorageType.FILE
        )
        try:
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            # It exists with another TTL: the last replica to start sets it, as for the streams.
            info = await js.stream_info(f"KV_{self.bucket}")
            info.config.max_age = self.ttl
            info.config.duplicate_window = min(self.ttl, 120.0)
            await js.update_stream(info.config)
            return await js.key_value(self.bucket)

    # Heartbeats, renewals, lapses

    async def _heartbeat(self) -> None:
        await self._store.put(f"members.{self.member}", b"")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                if not self._stopping:  # once it has left, renewals only, until every lease is released
                    await self._heartbeat()
                if time.monotonic() - self._watched_at > self.ttl:
                    # Not even our own heartbeats came through: the watch is gone (a server
                    # restart can lose it), so the members seen are stale. Watch again.
                    log.warning("ownership watch restarted", extra={"fields": self._fields()})
                    await self._unwatch()
                    await self._watch()
            except _DOWN as error:
                log.warning("membership heartbeat failed: %r", error)
            await asyncio.gather(*(self._renew(lease) for lease in list(self.leases.values())))
            lapsed = {lease.partition for lease in self.leases.values() if not lease.held() and not lease.releasing}
            if lapsed:
                log.warning(
                    "leases lapsed: partitions stopped",
                    extra={"fields": self._fields(partitions=sorted(lapsed))},
                )
                task = asyncio.create_task(self._release(lapsed))
                self._releases.add(task)
                task.add_done_callback(self._releases.discard)

    async def _renew(self, lease: Lease) -> None:
        async with lease.lock:
            if not lease.held() or lease.partition not in self.leases:
                return  # lapsed: never revived, it is being released
            sent = time.monotonic()
            try:
                lease.revision = await self._store.update(
                    f"partitions.{lease.partition}", self.member.encode(), last=lease.revision
                )
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError) as error:
                lease.valid_until = 0.0  # another holder, or expired: ours no longer
                log.warning("lease lost", extra={"fields": self._fields(partition=lease.partition, error=repr(error))})
                return
            except _DOWN as error:
                log.warning("lease not renewed: %r", error, extra={"fields": self._fields(partition=lease.partition)})
                return
            if lease.held():
                lease.valid_until = sent + VALID * self.ttl

    # Members

    async def _watch(self) -> None:
        watcher = await self._store.watchall()
        self._watched_at = time.monotonic()
        async for entry in watcher:
            if entry is None:
                break  # the current values are all in
            self._hear(entry)
        self._watcher = watcher  # only now: _watch_forever takes it from here

    async def _unwatch(self) -> None:
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except _DOWN:
                pass

    async def _watch_forever(self) -> None:
        while True:
            watcher = self._watcher
            assert watcher is not None, "watched at start"
            async for entry in watcher:
                if entry is not None:
                    self._hear(entry)
            while self._watcher is watcher:  # stopped: wait for the next one
                await asyncio.sleep(self.tick)

    def _hear(self, entry: KeyValue.Entry) -> None:
        self._watched_at = time.monotonic()
        kind, _, name = entry.key.partition(".")
        if kind == "members":
            if entry.operation:  # deleted: it left
                self._heard.pop(name, None)
                self._wake.set()
            else:
                if name not in self._heard:
                    self._wake.set()  # it joined
                self._heard[name] = time.monotonic()
        elif kind == "partitions" and entry.operation:
            self._wake.set()  # released: perhaps ours to take

    def _live(self) -> frozenset[str]:
        now = time.monotonic()
        for name in [name for name, heard in self._heard.items() if now - heard >= self.ttl]:
            del self._heard[name]  # the bucket's TTL has removed its heartbeat by now
        return frozenset({*self._heard, self.member})

    # Reconciling the leases held with the share

    async def _reconcile_forever(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.tick)
                await asyncio.sleep(0.05)  # one round for a burst (a member's releases come together)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._reconcile()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("ownership round failed", extra={"fields": self._fields()})

    async def _reconcile(self) -> None:
        members = self._live()
        if members != self.members:
            self.members = members
            log.info("members changed", extra={"fields": self._fields(members=sorted(members))})
            for listener in self._member_listeners:
                listener(members)
        share = assign(self.partitions, members)[self.member]
        extra = {p for p, lease in self.leases.items() if p not in share and not lease.releasing}
        if extra:
            await self._release(extra)
        missing = sorted(share - set(self.leases))
        taken = [lease for lease in await asyncio.gather(*(self._acquire(p) for p in missing)) if lease]
        if taken:
            await self._begin(taken)

    async def _acquire(self, partition: int) -> Lease | None:
        key, value, sent = f"partitions.{partition}", self.member.encode(), time.monotonic()
        try:
            try:
                revision, clean = await self._store.update(key, value, last=0), False  # nobody's
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    held = await self._store.get(key)
                    if held.value != value:
                        return None  # held by another member
                    # Ours from before a lapse (cut off from NATS for a while): nobody else took
                    # it, and this replica stopped consuming it then, so take it back at once.
                    revision, clean = await self._store.update(key, value, last=held.revision), False
                except nats.js.errors.KeyNotFoundError as gone:
                    if gone.entry is None:
                        return None  # expired meanwhile: the next round
                    revision, clean = await self._store.update(key, value, last=gone.entry.revision), True
        except nats.js.errors.KeyWrongLastSequenceError:
            return None  # another member was first
        except _DOWN as error:
            log.warning("lease not taken: %r", error, extra={"fields": self._fields(partition=partition)})
            return None
        return Lease(partition, revision, revision, sent + VALID * self.ttl, clean)

    async def _begin(self, taken: list[Lease]) -> None:
        partitions = frozenset(lease.partition for lease in taken)
        for lease in taken:
            self.leases[lease.partition] = lease
        try:
            for acquired, _ in self._followers:
                if acquired is not None:
                    await acquired(partitions)
        except Exception:  # noqa: BLE001 - not ready for them: handed back, tried again next round
            log.exception("partitions not prepared", extra={"fields": self._fields(partitions=sorted(partitions))})
            await self._release(set(partitions))
            return
        self.owned = self.owned | partitions
        for lease in taken:
            self.bus.start_partition(lease.partition, lease)
            log.info(
                "partition acquired",
                extra={"fields": self._fields(partition=lease.partition, epoch=lease.epoch, clean=lease.clean)},
            )

    async def _release(self, partitions: set[int]) -> None:
        """Stop consuming, wait for background work, tell the followers, delete the leases."""
        leases = [self.leases[p] for p in sorted(partitions) if p in self.leases and not self.leases[p].releasing]
        if not leases:
            return
        mine = frozenset(lease.partition for lease in leases)
        for lease in leases:
            lease.releasing = True
        self.owned = self.owned - mine
        await asyncio.gather(*(self.bus.stop_partition(p) for p in mine))  # acks flushed
        await asyncio.gather(*(self._idle[p].wait() for p in mine if self._busy.get(p)))
        for _, released in reversed(self._followers):
            if released is not None:
                try:
                    await released(mine)
                except Exception:  # noqa: BLE001 - the lease must go all the same
                    log.exception("release follower failed", extra={"fields": self._fields()})
        for lease in leases:  # said before the lease goes: nothing of it runs here any more
            held = round(time.monotonic() - lease.acquired_at, 3)
            log.info(
                "partition released",
                extra={"fields": self._fields(partition=lease.partition, epoch=lease.epoch, held_seconds=held)},
            )
        await asyncio.gather(*(self._delete(lease) for lease in leases))

    async def _delete(self, lease: Lease) -> None:
        async with lease.lock:
            try:
                await self._store.delete(f"partitions.{lease.partition}", last=lease.revision)
            except nats.js.errors.BadRequestError:
                pass  # no longer ours: it lapsed and was taken
            except _DOWN as error:
                log.warning("lease not deleted (it expires): %r", error)
            self.leases.pop(lease.partition, None)

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"service": self.service, "member": self.member, **more}


async def read_owners(js: Any, service: str) -> dict[int, str] | None:
    """Who holds each partition of `service` now (from its bucket); None if it has none."""
    try:
        kv = await js.key_value(f"mosaic-ownership-{service}")
    except nats.js.errors.BucketNotFoundError:
        return None
    owners: dict[int, str] = {}
    watcher = await kv.watch("partitions.>")
    async for entry in watcher:
        if entry is None:
            break
        if not entry.operation:
            owners[int(entry.key.rpartition(".")[2])] = entry.value.decode()
    await watcher.stop()
    return owners


# The replicas of this process (one per service; tests run several).
_ACTIVE: set[Ownership] = set()

metrics.observe(
    "mosaic.ownership.partitions",
    lambda: [
        (len(o.owned), {"messaging.consumer.group.name": o.service, "mosaic.ownership.member": o.member})
        for o in list(_ACTIVE)
    ],
)
