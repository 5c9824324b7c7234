"""The person's consent on the profile, and the traits it governs.

The consumer of `consent.changed`: each notice carries the person's whole consent after the
change, which replaces the profile's `consent` and `jurisdiction` as a new version (a snapshot
like any change, published on profile.updated, so segmentation's view follows consent the way
it follows traits). The notice names the person's current profile; it is written on that
profile's own row even when identity has merged it away (a split restores that row, and its
consent must be the restored person's), under the profile's lock in the replica that owns its
partition. A person known to consent before any event reaches the profile gets a profile of
its consent alone. A redelivered notice finds its cause marked applied and publishes the same
update again.

Traits are marked by purpose (`MOSAIC_PROFILE_TRAIT_PURPOSES`: `name=purpose` or `prefix*=purpose`,
the longest match wins): every answer of the profile API says a trait's purpose, and where the
person has not granted it (their decision, else their jurisdiction's default), GetProfile,
BatchGetProfiles, GetProfileAt and UpsertTraits withhold the value.
"""

from __future__ import annotations

import time

from mosaic.consent.v1 import consent_pb2
from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform.bus import Delivery
from mosaic.platform.consent import Policy
from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2
from profile_service.profiles import Profiles
from profile_service.store import MARKER_TTL, Latest, StoredSnapshot


class TraitPurposes:
    """Which purpose each trait is kept for, and the masking of those the person withholds."""

    def __init__(self, marks: dict[str, str], policy: Policy) -> None:
        self.exact = {name: p for name, p in marks.items() if not name.endswith("*")}
        # Longest prefix first, so `ad_id*` wins over `ad*`.
        self.prefixes = sorted(((n[:-1], p) for n, p in marks.items() if n.endswith("*")), key=lambda e: -len(e[0]))
        self.policy = policy

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def purpose_of(self, trait: str) -> str:
        if trait in self.exact:
            return self.exact[trait]
        return next((purpose for prefix, purpose in self.prefixes if trait.startswith(prefix)), "")

    def mark(self, profile: profile_pb2.Profile, now_us: int | None = None) -> None:
        """Set each trait's purpose; withhold the value of those the person has not granted."""
        if not self:
            return
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        person = consent_of(profile)
        granted: dict[str, bool] = {}
        for name, trait in profile.traits.items():
            purpose = self.purpose_of(name)
            if not purpose:
                continue
            trait.purpose = purpose
            if purpose not in granted:
                granted[purpose] = self.policy.granted(purpose, person, now_us).granted
            if not granted[purpose]:
                trait.withheld = True
                trait.ClearField("value")


def consent_of(profile: profile_pb2.Profile) -> consent_pb2.PersonConsent:
    """The person's consent as the profile keeps it."""
    return consent_pb2.PersonConsent(
        decisions=[profile.consent[p] for p in sorted(profile.consent)], jurisdiction=profile.jurisdiction
    )


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
                snapshot, profile = await self.profiles._replayed(person, applied)
                await self.profiles._publish(snapshot, profile)
                return
            latest = await self.store.latest(person) or Latest(profile_pb2.Profile(profile_id=person))
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
