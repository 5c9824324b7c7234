"""The profile domain: apply events in order, rebuild any version, backfill computed traits.

Every write to a profile happens under that profile's lock in the replica that owns its
partition: the bus consumers (events, merges, splits), UpsertTraits (which travels through the
same partition as an event) and computed-trait backfills. One writer per profile is what makes
the write-through cache and the unconditional Cassandra writes safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timezone

from google.protobuf import timestamp_pb2
from opentelemetry.context import Context

from mosaic.events.v1 import profile_updated_pb2, resolved_pb2
from mosaic.platform import metrics, tasks, topics
from mosaic.platform.bus import Bus
from mosaic.platform.errors import InvalidArgument, NotFound
from mosaic.platform.ownership import HeldPartitions
from mosaic.profile.v1 import profile_pb2
from profile_service import computed, history
from profile_service.backfill import Backfiller
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.fold import Edits, FoldRules, event_key, event_name, fold, oldest_day
from profile_service.purposes import TraitPurposes, Withheld, consent_of
from profile_service.store import MARKER_TTL, Change, Latest, ProfileStore, StoredSnapshot

log = logging.getLogger("mosaic.profile")
# Kept in a profile's aggregates: the first day its counters held when last pruned.
PRUNED = f"{computed.RESERVED}counters_from"


class DefinitionCatalog:
    """Computed-trait definitions (built-ins first), reloaded after a while; `on_new` is called
    when a reload finds one it did not know (a backfiller wakes to it)."""

    def __init__(self, store: ProfileStore, max_age: float = 5.0) -> None:
        self.store = store
        self.max_age = max_age
        self.on_new: Callable[[], None] = lambda: None
        self._definitions: list = []
        self._known: set[str] | None = None
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()

    async def all(self):
        async with self._lock:
            if time.monotonic() - self._loaded_at > self.max_age:
                stored = await self.store.definitions()
                names = {d.name for d in stored}
                if self._known is not None and names - self._known:
                    self.on_new()
                self._known = names
                self._definitions = [*computed.BUILT_IN, *stored]
                self._loaded_at = time.monotonic()
            return self._definitions

    async def stored(self):
        """The stored definitions alone (the built-ins are never backfilled)."""
        return (await self.all())[len(computed.BUILT_IN) :]

    def invalidate(self) -> None:
        self._loaded_at = -1e9


def _only(contexts: list[Context | None], chosen: list[tuple]) -> list[Context | None] | None:
    """The trace contexts of the chosen entries (index first); None when there are none to keep."""
    picked = [contexts[entry[0]] for entry in chosen]
    return picked if any(c is not None for c in picked) else None


def _outgoing(snapshot: profile_pb2.Snapshot, message: bytes) -> tuple[str, bytes, str]:
    """A version's profile.updated as the bus takes it: keyed by the profile, identified by the
    version, so a copy published again is dropped."""
    return snapshot.profile_id, message, f"{snapshot.profile_id}:{snapshot.version}"


def _now() -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


class Profiles:
    def __init__(self, store: ProfileStore, cache: ProfileCache, bus: Bus, settings: Settings) -> None:
        self.store = store
        self.cache = cache
        self.bus = bus
        self.settings = settings
        self.rules = FoldRules(settings.source_priority, settings.counter_days)
        self.purposes = TraitPurposes(settings.trait_purposes, settings.policy)
        self.definitions = DefinitionCatalog(store)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._backfilling: asyncio.Task | None = None

    def lock(self, profile_id: str) -> asyncio.Lock:
        """The lock of one profile; it lives while someone holds or waits for it."""
        lock = self._locks.get(profile_id)
        if lock is None:
            lock = self._locks[profile_id] = asyncio.Lock()
        return lock

    async def latest(self, profile_id: str) -> Latest | None:
        latest = self.cache.get(profile_id) if self.cache.cacheable(profile_id) else None
        if latest is None:
            generation = self.cache.generation
            latest = await self.store.latest(profile_id)
            if latest is not None and generation == self.cache.generation:
                self.cache.put(latest)  # not if its partition changed hands during the read
        return latest

    async def survivor(self, profile_id: str) -> Latest | None:
        """The latest of the profile a profile id ends at through its merges."""
        latest = await self.latest(profile_id)
        for _ in range(8):  # merges chain; a cycle (never written) stops
            if latest is None or not latest.merged_into:
                break
            latest = await self.latest(latest.merged_into)
        return latest

    async def withheld(self, profile_id: str, latest: Latest | None = None) -> Withheld:
        """What the person of a profile withholds now: by the consent its survivor keeps (a
        merged-away row keeps the consent it had at the merge; later notices go to the survivor)."""
        if not self.purposes:
            return self.purposes.of(None)
        if latest is None or latest.merged_into:
            latest = await self.survivor(latest.merged_into if latest else profile_id)
        return self.purposes.of(consent_of(latest.profile) if latest is not None else None)

    async def apply(self, resolved: resolved_pb2.ResolvedEvent) -> profile_pb2.Snapshot | None:
        """Fold one event into its profile, once; publish what changed. An event of a profile
        merged into another is forwarded to the survivor instead (None)."""
        return (await self.apply_batch([(resolved, None)]))[0]

    async def apply_batch(
        self, batch: list[tuple[resolved_pb2.ResolvedEvent, Context | None]]
    ) -> list[profile_pb2.Snapshot | None]:
        """Fold events (in stream order, each with the trace context to publish under) into their
        profiles, each event once, as `apply` would one after the other: one read and one write
        per profile for the whole batch, then every profile.updated in one publish. The events
        of an erased profile are dropped (None)."""
        for resolved, _ in batch:
            if not resolved.profile_id:
                raise InvalidArgument("profile_id", "is required")
        by_profile: dict[str, list[int]] = {}
        for index, (resolved, _) in enumerate(batch):
            by_profile.setdefault(resolved.profile_id, []).append(index)
        published: list[tuple[int, profile_pb2.Snapshot, bytes]] = []
        forwarded: list[tuple[int, str]] = []
        async with contextlib.AsyncExitStack() as locks:
            for profile_id in sorted(by_profile):  # one order for everyone who takes several
                await locks.enter_async_context(self.lock(profile_id))
            # Heads from the store, not the cache: the survivor's replica may have merged one away.
            heads, applied = await self.store.heads(
                {pid: [event_key(batch[i][0].event) for i in indexes] for pid, indexes in by_profile.items()}
            )
            # A profile about to be created may be one erased: its events are dropped.
            erased = await self.store.erased([pid for pid in by_profile if pid not in heads])
            if erased:
                log.info("dropped events of erased profiles", extra={"fields": {"profiles": len(erased)}})
            definitions = await self.definitions.all()
            changes = []
            for profile_id, indexes in by_profile.items():
                if profile_id in erased:
                    continue
                latest = heads.get(profile_id) or Latest(profile_pb2.Profile(profile_id=profile_id))
                change = Change(latest, marker_ttl=MARKER_TTL)  # event markers expire once no redelivery can come
                states = json.loads(latest.aggregates)
                folded: dict[str, tuple[profile_pb2.Snapshot, bytes]] = {}
                for index in indexes:
                    resolved = batch[index][0]
                    key = event_key(resolved.event)
                    if key in folded:  # twice in one batch: as a redelivery
                        published.append((index, *folded[key]))
                    elif (profile_id, key) in applied:
                        published.append((index, *await self._replayed(profile_id, applied[(profile_id, key)])))
                    elif latest.merged_into:
                        forwarded.append((index, latest.merged_into))
                    else:
                        folded[key] = self._fold(resolved, change, states, definitions)
                        published.append((index, *folded[key]))
                if change.snapshots:
                    change.latest = Latest(change.latest.profile, json.dumps(states), latest.merged_into)
                    changes.append(change)
            await self.store.save_changes(changes, self.settings.archive_days * 86400)
            for change in changes:
                self.cache.put(change.latest)
        if erased:  # nor is it left in the stream, naming the person for the stream's age
            await self.bus.erase_keys(topics.EVENTS_RESOLVED, sorted(erased))
        contexts = [context for _, context in batch]
        if forwarded:
            messages = []
            for index, survivor in forwarded:
                forward = resolved_pb2.ResolvedEvent()
                forward.CopyFrom(batch[index][0])
                forward.profile_id = survivor
                messages.append((survivor, forward.SerializeToString(), event_key(forward.event)))
            await self.bus.publish_many(topics.EVENTS_RESOLVED, messages, contexts=_only(contexts, forwarded))
        await self._publish_many(published, _only(contexts, published))
        results: list[profile_pb2.Snapshot | None] = [None] * len(batch)
        for index, snapshot, _ in published:
            results[index] = snapshot
        return results

    def _fold(self, resolved, change: Change, states: dict, definitions) -> tuple[profile_pb2.Snapshot, bytes]:
        """Fold one event into `change` (its latest and states, in place); no I/O. The latest
        profile is the batch's own copy, read from the store, so it is folded in place (a failed
        write leaves nothing behind: the cache is put only after it), and the changes come from
        what the fold wrote. Gives the snapshot and its profile.updated message."""
        event = resolved.event
        profile = change.latest.profile
        edits = Edits(profile)
        now = datetime.now(timezone.utc)
        # Counters leave the retention only when the day changes: pruned once a day, not per event.
        oldest = oldest_day(now, self.rules.counter_days)
        fold(profile, resolved, self.rules, now, edits, prune=states.get(PRUNED) != oldest)
        states[PRUNED] = oldest
        name = event_name(event)
        counted = {}  # definition → the bucket (day) the event added to
        for definition in definitions:
            if definition.event == name:
                bucket = computed.update(definition, states.setdefault(definition.name, {}), event)
                if bucket is not None:
                    counted[definition.name] = bucket
        computed.refresh(profile, definitions, states, now, self.rules.counter_days, edits, counted)
        # Archived (and new identifiers indexed) with the change: a backfill or a split reads the
        # archive for every applied event.
        change.archived.append((resolved, name))
        change.identifiers.extend(
            (identity.type, identity.value)
            for identity in (profile.identities[key] for key in edits.added("identities"))
        )
        snapshot, full = self._snapshot(edits.before, profile, event_key(event), edits.paths)
        change.snapshots.append(StoredSnapshot(snapshot, full))
        return snapshot, self._updated(snapshot, profile)

    def _snapshot(self, old, profile, cause: str, paths=None) -> tuple[profile_pb2.Snapshot, bool]:
        """The next version's snapshot (`profile` gets its number); `paths`, as in history.diff."""
        profile.version = old.version + 1
        changes = history.diff(old, profile, paths)
        full = profile.version == 1 or profile.version % self.settings.full_every == 0
        snapshot = profile_pb2.Snapshot(
            profile_id=profile.profile_id,
            version=profile.version,
            recorded_at=_now(),
            changes=changes,
            cause_message_id=cause,
            profile=profile if full else history.delta(profile, changes),
        )
        return snapshot, full

    async def _save(self, old, profile, states, cause: str, marker_ttl: int | None = None) -> profile_pb2.Snapshot:
        snapshot, full = self._snapshot(old, profile, cause)
        latest = Latest(profile, json.dumps(states))
        await self.store.save(StoredSnapshot(snapshot, full), latest, marker_ttl)
        metrics.profile_versions_written()
        self.cache.put(latest)
        return snapshot

    async def _replayed(self, profile_id: str, version: int):
        """A redelivered event: its change is stored (the marker is written with the state);
        give back what to publish again, in case the crash came before the publish."""
        [stored] = await self.store.snapshots(profile_id, version, version)
        return stored.snapshot, self._updated(stored.snapshot, await self.at_version(profile_id, version))

    def _updated(self, snapshot: profile_pb2.Snapshot, profile: profile_pb2.Profile) -> bytes:
        """The profile.updated message of a version: what a read would give, withheld by the
        consent the profile keeps (purposes.py)."""
        changes, traits = self.purposes.of_profile(profile).update(snapshot.changes, profile)
        update = profile_updated_pb2.ProfileUpdated(
            profile_id=snapshot.profile_id,
            version=snapshot.version,
            changes=changes,
            traits=traits,
            cause_message_id=snapshot.cause_message_id,
            updated_at=snapshot.recorded_at,
        )
        fields, computed_traits = update.traits.fields, profile.computed_traits
        for name in computed_traits:  # by key: see Withheld.update
            fields[name].CopyFrom(computed_traits[name])
        return update.SerializeToString()

    async def _publish(self, snapshot: profile_pb2.Snapshot, profile: profile_pb2.Profile) -> int:
        """Publish one version's profile.updated; gives its stream sequence (a backfill records
        the last of a partition's; the other callers have no use for it)."""
        message = _outgoing(snapshot, self._updated(snapshot, profile))
        (sequence,) = await self.bus.publish_many_sequenced(topics.PROFILE_UPDATED, [message])
        return sequence

    async def _publish_many(self, published, contexts: list[Context | None] | None) -> None:
        """Publish (index, snapshot, profile.updated bytes) entries. Published again on redelivery
        too (a crash may have come before the first publish); the message id makes JetStream
        drop the copy."""
        messages = [_outgoing(snapshot, message) for _, snapshot, message in published]
        await self.bus.publish_many(topics.PROFILE_UPDATED, messages, contexts=contexts)

    async def at_version(self, profile_id: str, version: int) -> profile_pb2.Profile:
        """Rebuild a version from the nearest full snapshot at or below it and the deltas after."""
        low = version
        while True:
            low = max(1, low - self.settings.full_every + 1)
            stored = await self.store.snapshots(profile_id, low, version)
            fulls = [i for i, s in enumerate(stored) if s.full]
            if fulls:
                start = fulls[-1]
                return history.replay([s.snapshot for s in stored[start:]], [s.full for s in stored[start:]])
            if low == 1:
                raise NotFound("profile version", f"{profile_id}@{version}")
            low -= 1

    async def at_time(self, profile_id: str, at: timestamp_pb2.Timestamp) -> profile_pb2.Profile:
        version = await self.store.version_at(profile_id, at.ToMicroseconds())
        if version == 0:
            raise NotFound("profile at time", f"{profile_id}@{at.ToJsonString()}")
        return await self.at_version(profile_id, version)

    def start_backfills(self, held: HeldPartitions) -> Backfiller:
        """Backfill the stored definitions on the partitions `held` owns, in the background
        until `close` (see backfill.py); the caller has the backfiller follow the ownership."""
        backfiller = Backfiller(self, held)
        self.definitions.on_new = backfiller.wake
        self._backfilling = asyncio.create_task(backfiller.run())
        return backfiller

    async def backfill(self, profile_id: str, definitions: list) -> int:
        """Recompute `definitions` for one profile from the archive: a version of its own for
        each that changes the profile (cause `backfill:<name>`), saved and published. Gives the
        stream sequence of the profile.updated that carries these backfills (0: none), for its
        partition's record (backfill.py)."""
        causes = [f"backfill:{definition.name}" for definition in definitions]
        sequence = 0
        async with self.lock(profile_id):
            heads, applied = await self.store.heads({profile_id: causes})
            latest = heads.get(profile_id)
            if latest is None:
                return 0  # erased (a privacy request) since the scan read it
            now = datetime.now(timezone.utc)
            since = int((now.timestamp() - self.settings.archive_days * 86400) * 1e6)
            events = await self.store.events(profile_id, since, int(now.timestamp() * 1e6) + 86400_000_000, 1_000_000)
            every = await self.definitions.all()
            states = json.loads(latest.aggregates)
            profile = latest.profile
            for definition, cause in zip(definitions, causes, strict=True):
                states[definition.name] = {}
                for archived in reversed(events):
                    computed.update(definition, states[definition.name], archived.event)
                refreshed = profile_pb2.Profile()
                refreshed.CopyFrom(profile)
                computed.refresh(refreshed, every, states, now, self.rules.counter_days)
                if (
                    refreshed.computed_traits != profile.computed_traits
                    or refreshed.daily_series != profile.daily_series
                ):
                    snapshot = await self._save(profile, refreshed, states, cause)
                    sequence = await self._publish(snapshot, refreshed)
                    profile = refreshed
            if not sequence and any((profile_id, cause) in applied for cause in causes):
                # Backfilled already, by a pass cut short (a restart, a handover) or whose publish
                # failed: the latest version is published again. JetStream drops the copy within
                # its duplicate window and answers with the original's sequence, which is at or
                # after the backfill's; past it, the copy is stored (a reader skips a version it has).
                found = await self.store.snapshots(profile_id, profile.version, profile.version)
                if found:
                    sequence = await self._publish(found[0].snapshot, profile)
        return sequence

    async def close(self) -> None:
        if self._backfilling is not None:
            await tasks.cancel(self._backfilling)
