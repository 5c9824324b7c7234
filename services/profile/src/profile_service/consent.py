"""The person's consent on the profile (what it withholds of the traits: purposes.py).

The consumer of `consent.changed`: each notice carries the person's whole consent after the
change, which replaces the profile's `consent` and `jurisdiction` as a new version (a snapshot
like any change, published on profile.updated, so segmentation's view follows consent the way
it follows traits, and traits its purposes withhold or give back). The notice names the person's current profile; it is written on that
profile's own row even when identity has merged it away (a split restores that row, and its
consent must be the restored person's), under the profile's lock in the replica that owns its
partition. A person known to consent before any event reaches the profile gets a profile of
its consent alone, unless the profile was erased. A redelivered notice finds its cause marked applied and publishes the same
update again.
"""

from __future__ import annotations

from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Delivery
from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2
from profile_service.profiles import Profiles
from profile_service.store import MARKER_TTL, Latest, StoredSnapshot


class ConsentChanges:
    """The consumer of consent.changed."""

    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        self.store = profiles.store

    async def __call__(self, change: consent_changed_pb2.ConsentChanged, delivery: Delivery) -> None:
        person = change.person_id
        if not person:
            raise InvalidArgument("person_id", "is required")
        cause = f"consent:{delivery.message_id}"
        async with self.profiles.lock(person):
            applied = await self.store.applied_version(person, cause)
            if applied is not None:  # a redelivery: publish again, in case the crash came first
                await self.profiles._publish_many([(0, *await self.profiles._replayed(person, applied))], None)
                return
            latest = await self.store.latest(person)
            if latest is None:
                if await self.store.erased([person]):
                    # A notice that came after the erasure (a republish that raced it): dropped,
                    # and taken out of the stream.
                    await self.profiles.bus.erase_keys(topics.CONSENT_CHANGED, [person])
                    return
                latest = Latest(profile_pb2.Profile(profile_id=person))
            profile = profile_pb2.Profile()
            profile.CopyFrom(latest.profile)
            profile.ClearField("consent")
            for decision in change.person.decisions:
                profile.consent[decision.purpose].CopyFrom(decision)
            profile.jurisdiction = change.person.jurisdiction
            if profile.consent == latest.profile.consent and profile.jurisdiction == latest.profile.jurisdiction:
                return  # a merge or split that changed nothing the profile keeps
            snapshot, full = self.profiles._snapshot(latest.profile, profile, cause)
            # Its own row, as it is: a merged-away profile stays merged, its partials kept.
            saved = Latest(profile, latest.aggregates, latest.merged_into)
            await self.store.save(StoredSnapshot(snapshot, full), saved, MARKER_TTL)
            self.profiles.cache.put(saved)
        await self.profiles._publish(snapshot, profile)
