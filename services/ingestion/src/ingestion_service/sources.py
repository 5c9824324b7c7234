"""Sources: their definitions and write keys, and the cache the hot path reads them through.

A write key's secret is shown once, when it is issued; the store keeps its SHA-256 (the
secret has 192 random bits, so a plain hash is enough to make a stolen table useless).
Rotation issues a new key and gives the keys in use an expiry at the end of a grace period.

Every replica reads sources through a short-lived cache (MOSAIC_INGEST_SOURCE_CACHE_SECONDS):
a change made on this replica is seen at once, on the others within the cache's lifetime,
and no change needs a restart. The cache is bounded: it also remembers the write keys and
source ids that turned out unknown, which anyone can send.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import field_mask_pb2, timestamp_pb2

from ingestion_service import transforms
from ingestion_service.config import Settings
from ingestion_service.governance import Governor, check_plan
from ingestion_service.store import IngestionStore
from mosaic.ingestion.v1 import source_pb2
from mosaic.platform import limits
from mosaic.platform.errors import AlreadyExists, InvalidArgument, NotFound
from mosaic.platform.lru import Lru

SOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
UPDATABLE = ("name", "disabled", "tracking_plan", "transforms", "rate_limit")
KEY_PREFIX = "wk_"
CACHE_SIZE = 10_000  # sources, and write keys, a replica remembers


def check_source_id(source_id: str, field: str = "source_id") -> None:
    if not source_id:
        raise InvalidArgument(field, "is required")
    if not SOURCE_ID.match(source_id):
        raise InvalidArgument(field, "must be 1-64 lower-case letters, digits, - or _, starting with a letter or digit")


def check_definition(source: source_pb2.Source, prefix: str = "source.") -> None:
    """Refuse a source definition that breaks a rule, naming the field."""
    if len(source.name) > 200:
        raise InvalidArgument(f"{prefix}name", "must be at most 200 characters")
    if source.HasField("tracking_plan"):
        check_plan(source.tracking_plan, f"{prefix}tracking_plan")
    transforms.check(list(source.transforms), f"{prefix}transforms")
    if source.rate_limit.events_per_second < 0:
        raise InvalidArgument(f"{prefix}rate_limit.events_per_second", "must not be negative")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> timestamp_pb2.Timestamp:
    now = timestamp_pb2.Timestamp()
    now.FromMilliseconds(int(time.time() * 1000))
    return now


@dataclass(frozen=True)
class ActiveSource:
    """A source as the hot path needs it: its definition, compiled governance and rate."""

    source: source_pb2.Source
    governor: Governor
    rate: float
    burst: int

    @property
    def source_id(self) -> str:
        return self.source.source_id


class SourceDirectory:
    """Sources and keys: managed here, read through a cache on the hot path."""

    def __init__(self, store: IngestionStore, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self._by_id: Lru[str, tuple[float, ActiveSource | None]] = Lru(CACHE_SIZE)
        self._by_key: Lru[str, tuple[float, tuple[str, int] | None]] = Lru(CACHE_SIZE)
        self._governors: dict[tuple[str, bytes], Governor] = {}

    # -- the hot path

    async def by_id(self, source_id: str) -> ActiveSource | None:
        """The stored source, or None when there is none."""
        cached = self._by_id.get(source_id)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        source = await self.store.get_source(source_id)
        active = self._activate(source) if source is not None else None
        self._by_id.put(source_id, (self._clock() + self.settings.source_cache_seconds, active))
        return active

    def open_source(self, source_id: str) -> ActiveSource:
        """A source id that was never created, as gRPC callers may use it (MOSAIC_INGEST_OPEN_SOURCES)."""
        return self._activate(source_pb2.Source(source_id=source_id))

    async def by_write_key(self, secret: str) -> ActiveSource | None:
        """The source of a write key, or None when the key is unknown or expired."""
        digest = hash_key(secret)
        cached = self._by_key.get(digest)
        if cached is not None and cached[0] > self._clock():
            owner = cached[1]
        else:
            owner = await self.store.key_owner(digest)
            self._by_key.put(digest, (self._clock() + self.settings.source_cache_seconds, owner))
        if owner is None:
            return None
        source_id, expires_at_ms = owner
        if expires_at_ms and expires_at_ms <= time.time() * 1000:
            return None
        return await self.by_id(source_id)

    def forget(self, source_id: str) -> None:
        """Drop what the cache holds about a source, after this replica changed it."""
        self._by_id.pop(source_id)
        self._by_key.clear()

    def _activate(self, source: source_pb2.Source) -> ActiveSource:
        # Keyed by the rules themselves: two versions of a source can share a millisecond.
        rules = source_pb2.Source(tracking_plan=source.tracking_plan, transforms=source.transforms)
        if not source.HasField("tracking_plan"):
            rules.ClearField("tracking_plan")
        version = (source.source_id, rules.SerializeToString(deterministic=True))
        governor = self._governors.get(version)
        if governor is None:
            governor = self._governors[version] = Governor(source)
            if len(self._governors) > 10_000:
                self._governors.clear()  # old versions pile up in a long life; recompiling is cheap
        limit = source.rate_limit
        rate = limit.events_per_second if source.HasField("rate_limit") else self.settings.default_rate
        burst = limit.burst if source.HasField("rate_limit") else self.settings.default_burst
        return ActiveSource(source, governor, rate, burst)

    # -- management

    async def create(self, source: source_pb2.Source) -> source_pb2.Source:
        check_source_id(source.source_id, "source.source_id")
        check_definition(source)
        stored = source_pb2.Source()
        stored.CopyFrom(source)
        del stored.write_keys[:]
        stored.created_at.CopyFrom(_now())
        stored.updated_at.CopyFrom(stored.created_at)
        if not await self.store.create_source(stored):
            raise AlreadyExists("source", source.source_id)
        key = await self._issue_key(stored.source_id)
        self.forget(stored.source_id)
        stored.write_keys.append(key)
        return stored

    async def get(self, source_id: str) -> source_pb2.Source:
        check_source_id(source_id)
        source = await self.store.get_source(source_id)
        if source is None:
            raise NotFound("source", source_id)
        source.write_keys.extend(key for _, key in await self.store.write_keys(source_id))
        return source

    async def page(self, size: int, token: str) -> tuple[list[source_pb2.Source], str]:
        """A page of sources by id, with their write keys, and the next page's token."""
        page, next_token = limits.page_of(await self.store.list_sources(), lambda s: s.source_id, size, token)
        for source in page:
            source.write_keys.extend(key for _, key in await self.store.write_keys(source.source_id))
        return page, next_token

    async def update(self, change: source_pb2.Source, mask: field_mask_pb2.FieldMask) -> source_pb2.Source:
        check_source_id(change.source_id, "source.source_id")
        paths = list(mask.paths) or list(UPDATABLE)
        for path in paths:
            if path not in UPDATABLE:
                raise InvalidArgument("update_mask", f"may name {', '.join(UPDATABLE)}; not {path!r}")
        check_definition(change)
        source = await self.store.get_source(change.source_id)
        if source is None:
            raise NotFound("source", change.source_id)
        for path in paths:
            if path == "transforms":
                del source.transforms[:]
                source.transforms.extend(change.transforms)
            elif path in ("tracking_plan", "rate_limit"):
                if change.HasField(path):
                    getattr(source, path).CopyFrom(getattr(change, path))
                else:
                    source.ClearField(path)  # named in the mask and unset: removed
            else:
                setattr(source, path, getattr(change, path))
        source.updated_at.CopyFrom(_now())
        await self.store.save_source(source)
        self.forget(source.source_id)
        return await self.get(source.source_id)

    async def rotate(
        self, source_id: str, grace_seconds: float | None
    ) -> tuple[source_pb2.WriteKey, source_pb2.Source]:
        check_source_id(source_id)
        if await self.store.get_source(source_id) is None:
            raise NotFound("source", source_id)
        grace = self.settings.key_grace_seconds if grace_seconds is None else grace_seconds
        if grace < 0:
            raise InvalidArgument("grace_period", "must not be negative")
        key = await self._issue_key(source_id)
        ends = int((time.time() + grace) * 1000)
        for digest, old in await self.store.write_keys(source_id):
            if old.key_id == key.key_id:
                continue
            if not old.HasField("expires_at") or old.expires_at.ToMilliseconds() > ends:
                await self.store.set_key_expiry(source_id, digest, ends)
        self.forget(source_id)
        return key, await self.get(source_id)

    async def _issue_key(self, source_id: str) -> source_pb2.WriteKey:
        secret = KEY_PREFIX + secrets.token_urlsafe(24)
        key = source_pb2.WriteKey(key_id=secret[:10], created_at=_now())
        await self.store.add_write_key(source_id, hash_key(secret), key)
        key.secret = secret
        return key
