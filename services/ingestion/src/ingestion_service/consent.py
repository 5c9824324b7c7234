"""Consent at the door: what a purpose forbids is dropped or stripped before it is stored.

`MOSAIC_INGEST_CONSENT_RULES` says, per purpose, what is not kept of a person who has not
granted it (JSON): `{"analytics": {"drop": ["track", "page", "screen"]}, "advertising":
{"strip": ["context.device.advertisingId", "context.device.adTrackingEnabled"]}}`. A dropped
event is answered SUPPRESSED with the reason; a stripped one is stored without those fields.

Whether a person has granted a purpose, without asking anyone per event:

1. the event's own word: Segment's consent stamps `context.consent.categoryPreferences` on
   every event (categories → purposes as the consent service maps them), and
   `context.consent.gpc: true` refuses every sale or sharing purpose. It is the freshest word
   (the consent service records it from the same event).
2. else what the person decided, as `consent.changed` announced it: ingestion consumes the
   notices (its own durable consumer), asks identity once per notice for the person's user
   and anonymous ids (GetIdentities) and stores the person's consent under the salted hash of
   each (the suppression list's hashes, so an erasure deletes them), then every replica reads
   them through a cache (`MOSAIC_INGEST_CONSENT_CACHE_SECONDS`, also how long another
   replica's newer notice may take to be seen). The user id's state wins over the anonymous
   id's: an account's decision over a device's.
3. else the default of the deployment's jurisdiction (`MOSAIC_CONSENT_JURISDICTION`).

Nothing here calls the consent service, so its outage changes nothing at the door: notices
wait in their stream and are applied when identity answers. An identifier the person gained
after their last notice is unknown until the next one (a new device is asked by its banner).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import struct_pb2

from ingestion_service.store import IngestionStore
from mosaic.consent.v1 import consent_pb2
from mosaic.events.v1 import consent_changed_pb2, event_pb2
from mosaic.identity.v1 import identity_service_pb2
from mosaic.platform.bus import Delivery
from mosaic.platform.config import ConfigError
from mosaic.platform.consent import Policy
from mosaic.platform.errors import InvalidArgument, Unavailable
from mosaic.platform.lru import Lru

log = logging.getLogger("ingestion.consent")
T = event_pb2.EventType
EVENT_TYPES = {
    "track": T.EVENT_TYPE_TRACK,
    "identify": T.EVENT_TYPE_IDENTIFY,
    "page": T.EVENT_TYPE_PAGE,
    "screen": T.EVENT_TYPE_SCREEN,
    "group": T.EVENT_TYPE_GROUP,
    "alias": T.EVENT_TYPE_ALIAS,
}
ROOTS = ("context", "properties", "traits", "integrations")
# The identifiers an event names that a person's consent is kept under.
KEYED = ("user_id", "anonymous_id")
Hash = Callable[[str, str], str | None]


@dataclass(frozen=True)
class Rule:
    """What one purpose forbids storing without it."""

    purpose: str
    drop: frozenset[int] = frozenset()
    strip: tuple[tuple[str, ...], ...] = ()


def parse_rules(spec: str, policy: Policy, variable: str = "MOSAIC_INGEST_CONSENT_RULES") -> tuple[Rule, ...]:
    """The rules of a JSON spec; ConfigError naming the variable and the rule broken."""
    if not spec.strip():
        return ()
    try:
        raw = json.loads(spec)
    except ValueError as error:
        raise ConfigError(variable, f"must be JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(variable, 'must be an object of purposes, e.g. {"analytics": {"drop": ["track"]}}')
    rules = []
    for purpose, what in raw.items():
        if purpose not in policy.purposes:
            raise ConfigError(variable, f"{purpose!r} is not a configured purpose (MOSAIC_CONSENT_PURPOSES)")
        if not isinstance(what, dict) or not set(what) <= {"drop", "strip"} or not what:
            raise ConfigError(variable, f"{purpose}: must be an object with drop and/or strip")
        drop, strip = what.get("drop", []), what.get("strip", [])
        if not isinstance(drop, list) or any(t not in EVENT_TYPES for t in drop):
            raise ConfigError(variable, f"{purpose}.drop: must list event types ({', '.join(EVENT_TYPES)})")
        paths = []
        for path in strip if isinstance(strip, list) else [None]:
            parts = tuple(path.split(".")) if isinstance(path, str) else ()
            if len(parts) < 2 or parts[0] not in ROOTS or not all(parts):
                raise ConfigError(variable, f"{purpose}.strip: {path!r} must be a dotted path under {', '.join(ROOTS)}")
            paths.append(parts)
        rules.append(Rule(purpose, frozenset(EVENT_TYPES[t] for t in drop), tuple(paths)))
    return tuple(rules)


def _struct(holder, key: str) -> struct_pb2.Struct | None:
    if not hasattr(holder, "keys") or key not in holder:
        return None
    value = holder[key]
    return value if isinstance(value, struct_pb2.Struct) else None


def _strip(event: event_pb2.Event, path: tuple[str, ...]) -> bool:
    """Remove the field at `path`; whether it was there."""
    holder: struct_pb2.Struct | None = getattr(event, path[0])
    for key in path[1:-1]:
        holder = _struct(holder, key)
        if holder is None:
            return False
    if holder is None or path[-1] not in holder:
        return False
    del holder[path[-1]]
    return True


class PeopleConsent:
    """People's recorded consent by the salted hash of an identifier: the store, and a cache in
    front of it that also remembers who has none."""

    def __init__(self, store: IngestionStore, size: int = 100_000, max_age: float = 5.0) -> None:
        self.store = store
        self.max_age = max_age
        self._cache: Lru[str, tuple[float, consent_pb2.PersonConsent | None]] = Lru(size)

    async def lookup(self, hashes: Iterable[str]) -> dict[str, consent_pb2.PersonConsent | None]:
        """Each hash's consent (None: nothing recorded); what the cache lacks in one store read.
        Unavailable when the store is down: the caller's batch is then not accepted, so the
        client retries instead of its events being judged by a default."""
        found: dict[str, consent_pb2.PersonConsent | None] = {}
        missing = []
        now = time.monotonic()
        for digest in set(hashes):
            cached = self._cache.get(digest)
            if cached is not None and now - cached[0] < self.max_age:
                found[digest] = cached[1]
            else:
                missing.append(digest)
        if missing:
            stored = await self.store.consent_states(missing)
            for digest in missing:
                person = consent_pb2.PersonConsent.FromString(stored[digest]) if digest in stored else None
                self._cache.put(digest, (now, person))
                found[digest] = person
        return found

    async def record(self, hashes: list[str], person: consent_pb2.PersonConsent) -> None:
        """Store a person's consent under each hash (and see it here at once)."""
        payload = person.SerializeToString()
        await self.store.put_consent_states(dict.fromkeys(hashes, payload))
        now = time.monotonic()
        for digest in hashes:
            self._cache.put(digest, (now, person))

    async def forget(self, hashes: list[str]) -> None:
        """An erasure: nothing of the person is kept here any more."""
        await self.store.delete_consent_states(hashes)
        for digest in hashes:
            self._cache.pop(digest)


class ConsentGate:
    """The rules applied to a batch: `lookup` once, then `apply` per event."""

    def __init__(self, rules: tuple[Rule, ...], policy: Policy, people: PeopleConsent, hash_: Hash) -> None:
        self.rules = rules
        self.policy = policy
        self.people = people
        self.hash = hash_
        self.dropped = 0
        self.stripped = 0

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def _keys(self, event: event_pb2.Event) -> list[str]:
        keys = []
        for kind in KEYED:
            value = getattr(event, kind)
            digest = self.hash(kind, value) if value else None
            if digest is not None:
                keys.append(digest)
        return keys

    async def lookup(self, events: Iterable[event_pb2.Event]) -> dict[str, consent_pb2.PersonConsent | None]:
        return await self.people.lookup(digest for event in events for digest in self._keys(event))

    def apply(self, event: event_pb2.Event, known: dict[str, consent_pb2.PersonConsent | None]) -> str | None:
        """Strip what the person's consent forbids (in place); the reason when it forbids the whole event."""
        person = next((known[k] for k in self._keys(event) if known.get(k) is not None), None)
        now_us = time.time_ns() // 1000
        for rule in self.rules:
            granted, reason = self._granted(event, rule.purpose, person, now_us)
            if granted:
                continue
            if event.type in rule.drop:
                self.dropped += 1
                return f"consent: {rule.purpose} not granted ({reason})"
            for path in rule.strip:
                self.stripped += _strip(event, path)
        return None

    def _granted(
        self, event: event_pb2.Event, purpose: str, person: consent_pb2.PersonConsent | None, now_us: int
    ) -> tuple[bool, str]:
        stamped = _struct(event.context, "consent")
        if stamped is not None:
            if "gpc" in stamped and stamped["gpc"] is True and self.policy.purposes[purpose].sale_or_sharing:
                return False, "global privacy control"
            preferences = _struct(stamped, "categoryPreferences")
            for category, value in preferences.items() if preferences is not None else ():
                if isinstance(value, bool) and self.policy.purpose_of(category) == purpose:
                    return value, "the event's consent preferences"
        state = self.policy.granted(purpose, person, now_us)
        return state.granted, state.reason


class ConsentChanges:
    """The consumer of consent.changed: the person's consent under the hash of each of their ids."""

    def __init__(self, people: PeopleConsent, identity, hash_: Hash) -> None:
        self.people = people
        self.identity = identity  # an IdentityService stub
        self.hash = hash_

    async def __call__(self, change: consent_changed_pb2.ConsentChanged, delivery: Delivery) -> None:
        if not change.person_id:
            raise InvalidArgument("person_id", "is required")
        try:
            answer = await self.identity.GetIdentities(
                identity_service_pb2.GetIdentitiesRequest(profile_id=change.person_id), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return  # a person identity does not know: no identifier an event could carry
            raise Unavailable("identity", f"{error.code().name}: {error.details()}") from error
        hashes = [
            digest
            for identity in answer.identities
            if identity.identifier.type in KEYED
            and (digest := self.hash(identity.identifier.type, identity.identifier.value)) is not None
        ]
        if not hashes:
            return
        person = consent_pb2.PersonConsent(jurisdiction=change.person.jurisdiction)
        for decision in change.person.decisions:
            # What enforcing needs, nothing that names the person (their profile ids stay out).
            kept = person.decisions.add(
                purpose=decision.purpose,
                granted=decision.granted,
                change=decision.change,
                decided_at=decision.decided_at,
            )
            if decision.HasField("expires_at"):
                kept.expires_at.CopyFrom(decision.expires_at)
        await self.people.record(hashes, person)
        log.info("consent kept", extra={"fields": {"identifiers": len(hashes), "cause": change.cause}})
