"""Merges and splits decided by identity, applied to profiles.

On `identity.merged` the merged profiles are folded into the survivor: traits by the same
rule as events (later event time wins, then source priority), identities and groups united,
counters and computed-trait partials added (event series' daily_series are rewritten from the
added partials), first and last seen widened, archived events copied. The merged profiles keep
their own state and history and point at the survivor, so reads of them answer with the
survivor and events still on their way are forwarded to it.

On `identity.split` the merge is undone: the survivor is rebuilt from its version before the
merge plus the events archived since that are not the restored profiles'; each restored
profile from its own state plus the events since that carry its identifiers. Both histories
record the split. Pure combination logic is at the top; the handlers below it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from mosaic.events.v1 import identity_changed_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Delivery
from mosaic.platform.errors import FailedPrecondition
from mosaic.profile.v1 import profile_pb2
from profile_service import computed
from profile_service.fold import FoldRules, event_key, event_name, fold
from profile_service.profiles import Profiles
from profile_service.store import Latest

log = logging.getLogger("mosaic.profile.merges")


def _later(a, b) -> bool:
    return (a.seconds, a.nanos) > (b.seconds, b.nanos)


def combine(into: profile_pb2.Profile, other: profile_pb2.Profile, rules: FoldRules) -> None:
    """Fold `other` into `into` in place."""
    for name, trait in other.traits.items():
        mine = into.traits.get(name)
        if (
            mine is None
            or _later(trait.set_at, mine.set_at)
            or (trait.set_at == mine.set_at and rules.rank(trait.source_id) < rules.rank(mine.source_id))
        ):
            into.traits[name].CopyFrom(trait)
    for key, identity in other.identities.items():
        my_identity = into.identities.get(key)
        if my_identity is None:
            into.identities[key].CopyFrom(identity)
            continue
        if _later(my_identity.first_seen, identity.first_seen):
            my_identity.first_seen.CopyFrom(identity.first_seen)
            my_identity.source_id = identity.source_id
        if _later(identity.last_seen, my_identity.last_seen):
            my_identity.last_seen.CopyFrom(identity.last_seen)
    for group_id, group in other.groups.items():
        my_group = into.groups.get(group_id)
        if my_group is None or _later(my_group.joined_at, group.joined_at):
            into.groups[group_id].CopyFrom(group)
    for key, counter in other.daily_counters.items():
        my_counter = into.daily_counters[key]
        my_counter.day, my_counter.event = counter.day, counter.event
        my_counter.count += counter.count
        my_counter.revenue += counter.revenue
    into.event_count += other.event_count
    if other.HasField("first_seen") and (not into.HasField("first_seen") or _later(into.first_seen, other.first_seen)):
        into.first_seen.CopyFrom(other.first_seen)
    if other.HasField("last_seen") and (not into.HasField("last_seen") or _later(other.last_seen, into.last_seen)):
        into.last_seen.CopyFrom(other.last_seen)


def combine_states(into: dict, other: dict) -> None:
    """Add the computed-trait partials of `other` to `into`: exact for every aggregation. The
    reserved keys of `into` go (`other`'s counters were pruned by their own day)."""
    for name in [n for n in into if n.startswith(computed.RESERVED)]:
        del into[name]
    for name, buckets in other.items():
        if name.startswith(computed.RESERVED):
            continue
        target = into.setdefault(name, {})
        for bucket, part in buckets.items():
            mine = target.get(bucket)
            if mine is None:
                target[bucket] = part
                continue
            mine["n"] += part["n"]
            if "sum" in part:
                mine["sum"] = mine.get("sum", 0) + part["sum"]
                mine["min"] = min(mine.get("min", part["min"]), part["min"])
                mine["max"] = max(mine.get("max", part["max"]), part["max"])
            if "first" in part and ("first" not in mine or part["first"][0] < mine["first"][0]):
                mine["first"] = part["first"]
            if "last" in part and ("last" not in mine or part["last"][0] >= mine["last"][0]):
                mine["last"] = part["last"]
            for token, count in part.get("values", {}).items():
                values = mine.setdefault("values", {})
                values[token] = values.get(token, 0) + count


def carries(archived: resolved_pb2.ResolvedEvent, identities) -> bool:
    """Whether an archived event was resolved by one of a profile's identities."""
    return any(f"{i.type}:{i.value}" in identities for i in archived.identifiers)


class MergeHandler:
    """identity.merged and identity.split, applied under the survivor's partition lock."""

    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        self.store = profiles.store

    async def merged(self, merge: identity_changed_pb2.IdentityMerged, delivery: Delivery) -> None:
        survivor = merge.survivor_profile_id
        async with self.profiles.lock(survivor):
            applied = await self.store.applied_version(survivor, merge.merge_id)
            if applied is not None:
                await self.profiles._publish_many([(0, *await self.profiles._replayed(survivor, applied))], None)
                return
            latest = await self.store.latest(survivor)
            erased = await self.store.erased([survivor, *merge.merged_profile_ids])
            if latest is None and survivor in erased:
                # A merge of an erased person that came after the erasure: dropped, and taken
                # out of the stream.
                await self.profiles.bus.erase_keys(topics.IDENTITY_MERGED, [survivor])
                return
            latest = latest or Latest(profile_pb2.Profile(profile_id=survivor))
            profile = profile_pb2.Profile()
            profile.CopyFrom(latest.profile)
            states = json.loads(latest.aggregates)
            now = datetime.now(timezone.utc)
            for merged_id in merge.merged_profile_ids:
                if merged_id in erased:
                    continue  # no pointer row for it: it would name the erased profile again
                # First the pointer, so events of the merged profile from now on go to the survivor.
                await self.store.set_merged_into(merged_id, survivor)
                self.profiles.cache.discard(merged_id)
                other = await self.store.latest(merged_id)
                if other is None:
                    continue
                combine(profile, other.profile, self.profiles.rules)
                combine_states(states, json.loads(other.aggregates))
                for archived in await self._archived(merged_id, now):
                    await self.store.archive(
                        survivor, archived, event_name(archived.event), self.profiles.settings.archive_days * 86400
                    )
                for identity in other.profile.identities.values():
                    await self.store.index_identifier(identity.type, identity.value, survivor)
            computed.refresh(
                profile, await self.profiles.definitions.all(), states, now, self.profiles.rules.counter_days
            )
            snapshot = await self.profiles._save(latest.profile, profile, states, merge.merge_id)
        await self.profiles._publish(snapshot, profile)
        log.info("merged profiles", extra={"fields": {"survivor": survivor, "merged": list(merge.merged_profile_ids)}})

    async def split(self, split: identity_changed_pb2.IdentitySplit, delivery: Delivery) -> None:
        survivor = split.survivor_profile_id
        async with self.profiles.lock(survivor):
            if await self.store.applied_version(survivor, split.split_id) is not None:
                return  # applied; the restored profiles were saved before the survivor
            merged_at = await self.store.applied_version(survivor, split.merge_id)
            if merged_at is None and await self.store.erased([survivor]):
                await self.profiles.bus.erase_keys(topics.IDENTITY_SPLIT, [survivor])
                return  # the person was erased: nothing of the merge is left to undo
            if merged_at is None:
                raise FailedPrecondition("merge_id", f"merge {split.merge_id!r} was never applied to {survivor}")
            now = datetime.now(timezone.utc)
            latest = await self.store.latest(survivor)
            assert latest is not None  # the merge was applied to it
            current = latest.profile
            # The events that arrived after the merge are the causes of the survivor's later
            # snapshots (event times say nothing of arrival: a late event is old but new here).
            causes = {
                s.snapshot.cause_message_id
                for s in await self.store.snapshots(survivor, merged_at + 1, current.version)
            }
            archived = list(reversed(await self._archived(survivor, now)))
            later = [e for e in archived if event_key(e.event) in causes]
            gone = await self.store.erased(list(split.restored_profile_ids))
            restored = [
                await self.store.latest(pid) or Latest(profile_pb2.Profile(profile_id=pid))
                for pid in split.restored_profile_ids
                if pid not in gone
            ]
            theirs = {key for own in restored for key in own.profile.identities}
            for own in restored:
                mine = [e for e in later if carries(e, own.profile.identities)]
                for event in mine:  # its events from now on, for later recounts and splits
                    await self.store.archive(
                        own.profile.profile_id,
                        event,
                        event_name(event.event),
                        self.profiles.settings.archive_days * 86400,
                    )
                history = list(reversed(await self._archived(own.profile.profile_id, now)))  # mine included
                await self._rebuild(own.profile, own.profile, history, mine, split.split_id, now)
                await self.store.set_merged_into(own.profile.profile_id, "")
            if merged_at > 1:
                before = await self.profiles.at_version(survivor, merged_at - 1)
            else:
                before = profile_pb2.Profile(profile_id=survivor)
            kept = [e for e in archived if not carries(e, theirs)]
            rest = [e for e in later if not carries(e, theirs)]
            await self._rebuild(current, before, kept, rest, split.split_id, now)

    async def _rebuild(self, current, base, counted, events, cause: str, now) -> None:
        """Save `base` plus `events` as the next version after `current`, and publish it.

        The computed-trait partials are not kept in history, so they are recounted from
        `counted`: every archived event the rebuilt profile owns, oldest first."""
        profile = profile_pb2.Profile()
        profile.CopyFrom(base)
        profile.version = current.version
        # Consent is not derived from events: the latest the consent service announced stays.
        profile.ClearField("consent")
        for purpose, decision in current.consent.items():
            profile.consent[purpose].CopyFrom(decision)
        profile.jurisdiction = current.jurisdiction
        definitions = await self.profiles.definitions.all()
        states: dict = {}
        for archived in counted:
            for definition in definitions:
                computed.update(definition, states.setdefault(definition.name, {}), archived.event)
        for archived in events:
            fold(profile, archived, self.profiles.rules, now)
        computed.refresh(profile, definitions, states, now, self.profiles.rules.counter_days)
        snapshot = await self.profiles._save(current, profile, states, cause)
        await self.profiles._publish(snapshot, profile)

    async def _archived(self, profile_id: str, now: datetime) -> list[resolved_pb2.ResolvedEvent]:
        since = int((now.timestamp() - self.profiles.settings.archive_days * 86400) * 1e6)
        return await self.store.events(profile_id, since, int(now.timestamp() * 1e6) + 86400_000_000, 1_000_000)
