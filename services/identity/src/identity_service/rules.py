"""Identity rules: priority, limits and blocked values per identifier type, and the caps.

The rules live in the identity store (one record, versioned) and are managed over gRPC with
GetRules / UpdateRules. Every replica reads them through `RulesCache`, which keeps them for a
short max age (`MOSAIC_IDENTITY_RULES_MAX_AGE`, 5 s): a change reaches every replica within
seconds with no restart and no file to distribute to pods, the store is the one place that
says which rules are in force, and the version makes UpdateRules a compare-and-set.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mosaic.identity.v1 import identity_pb2
from mosaic.platform import limits
from mosaic.platform.errors import InvalidArgument

DEFAULT_PRIORITY = ("user_id", "email", "phone", "device_id", "anonymous_id")
DEFAULT_LIMITS = {"user_id": 1}
DEFAULT_LIMIT = 5
DEFAULT_MAX_MERGES = 100
DEFAULT_MAX_MAPPINGS = 1000
# Junk that SDKs and forms send in place of an id; matched against the whole value, any case.
# The platform holds the list: ingestion refuses an event whose only ids match it.
DEFAULT_BLOCKED = limits.JUNK_PATTERNS
OLDEST = identity_pb2.SURVIVOR_RULE_OLDEST
NEWEST = identity_pb2.SURVIVOR_RULE_NEWEST


@dataclass(frozen=True)
class Rules:
    """The rules in force, defaults filled in; built from the stored `IdentityRules`."""

    priority: tuple[str, ...] = DEFAULT_PRIORITY
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    blocked: dict[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict)
    blocked_everywhere: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.I) for p in DEFAULT_BLOCKED)
    max_merges: int = DEFAULT_MAX_MERGES
    max_mappings: int = DEFAULT_MAX_MAPPINGS
    survivor: identity_pb2.SurvivorRule = OLDEST
    trait_identifiers: tuple[tuple[str, str], ...] = ()
    version: int = 0

    @classmethod
    def from_proto(cls, message: identity_pb2.IdentityRules) -> Rules:
        """Validate proposed or stored rules; a bad pattern or limit names its field."""
        priority: list[str] = []
        limits = dict(DEFAULT_LIMITS)
        blocked: dict[str, tuple[re.Pattern[str], ...]] = {}
        for index, rule in enumerate(message.rules):
            where = f"rules.rules[{index}]"
            if not rule.type:
                raise InvalidArgument(f"{where}.type", "is required")
            if rule.type in priority:
                raise InvalidArgument(f"{where}.type", f"{rule.type!r} is listed twice")
            if rule.limit < 0:
                raise InvalidArgument(f"{where}.limit", "must not be negative")
            priority.append(rule.type)
            if rule.limit:
                limits[rule.type] = rule.limit
            blocked[rule.type] = _compiled(rule.blocked_patterns, f"{where}.blocked_patterns")
        # Types the deployment did not list keep their default place after the listed ones.
        priority.extend(t for t in DEFAULT_PRIORITY if t not in priority)
        for value, name in ((message.max_merges, "max_merges"), (message.max_mappings, "max_mappings")):
            if value < 0:
                raise InvalidArgument(f"rules.{name}", "must not be negative")
        traits = []
        for index, trait in enumerate(message.trait_identifiers):
            if not trait.path or not trait.type:
                raise InvalidArgument(f"rules.trait_identifiers[{index}]", "needs a path and a type")
            traits.append((trait.path, trait.type))
        everywhere = tuple(re.compile(p, re.I) for p in DEFAULT_BLOCKED)
        return cls(
            priority=tuple(priority),
            limits=limits,
            blocked=blocked,
            blocked_everywhere=everywhere + _compiled(message.blocked_patterns, "rules.blocked_patterns"),
            max_merges=message.max_merges or DEFAULT_MAX_MERGES,
            max_mappings=message.max_mappings or DEFAULT_MAX_MAPPINGS,
            survivor=NEWEST if message.survivor == NEWEST else OLDEST,
            trait_identifiers=tuple(traits),
            version=message.version,
        )

    def limit(self, identifier_type: str) -> int:
        return self.limits.get(identifier_type, DEFAULT_LIMIT)

    def rank(self, identifier_type: str) -> int:
        """Lower ranks first; unknown types (external ids, trait paths) rank before anonymous ids."""
        if identifier_type in self.priority:
            index = self.priority.index(identifier_type)
            return index if identifier_type != "anonymous_id" else 10_000 + index
        return 5_000

    def blocked_reason(self, identifier_type: str, value: str) -> str | None:
        for pattern in (*self.blocked_everywhere, *self.blocked.get(identifier_type, ())):
            if pattern.fullmatch(value):
                return f"blocked value (pattern {pattern.pattern!r})"
        return None


def _compiled(patterns, field_name: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for index, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern, re.I))
        except re.error as error:
            raise InvalidArgument(f"{field_name}[{index}]", f"is not a regular expression: {error}") from None
    return tuple(compiled)


def with_defaults(message: identity_pb2.IdentityRules) -> identity_pb2.IdentityRules:
    """The stored rules as GetRules shows them: every default type and cap spelled out."""
    rules = Rules.from_proto(message)
    shown = identity_pb2.IdentityRules(
        blocked_patterns=[p.pattern for p in rules.blocked_everywhere],
        max_merges=rules.max_merges,
        max_mappings=rules.max_mappings,
        survivor=rules.survivor,
        version=message.version,
        trait_identifiers=message.trait_identifiers,
    )
    for identifier_type in rules.priority:
        shown.rules.add(
            type=identifier_type,
            limit=rules.limit(identifier_type),
            blocked_patterns=[p.pattern for p in rules.blocked.get(identifier_type, ())],
        )
    return shown


class RulesCache:
    """The rules in force, re-read from the store when older than `max_age` seconds."""

    def __init__(self, load: Callable[[], Awaitable[identity_pb2.IdentityRules | None]], max_age: float) -> None:
        self._load = load
        self.max_age = max_age
        self._rules: Rules | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> Rules:
        if self._rules is not None and time.monotonic() - self._loaded_at < self.max_age:
            return self._rules
        async with self._lock:
            if self._rules is None or time.monotonic() - self._loaded_at >= self.max_age:
                stored = await self._load()
                self._rules = Rules.from_proto(stored) if stored is not None else Rules()
                self._loaded_at = time.monotonic()
        return self._rules

    def invalidate(self) -> None:
        self._loaded_at = 0.0
