"""What segmentation knows of one profile, and how profile.updated moves it. Pure logic.

The state is what the segment language reads: traits (nested objects kept as dicts), computed
traits, how many identifiers of each type the profile has, the daily counters (`(epoch day,
event) -> count`), the event series' days (`(epoch day, series) -> (count, sum, min, max)`), and the person's consent: for each purpose they decided, until when it is
granted (0 for a refusal, infinity for a grant without expiry), and their jurisdiction.
It is built from a Profile (ScanProfiles, GetProfile) and moved forward by the changes of each
profile.updated: every change carries the new value of one entry (`traits.plan`,
`computed_traits.orders`, `identities.email:a@b.c`, `daily_counters.2026-03-01|Order Completed`,
`daily_series.2026-03-01|series_…` (a struct of count, sum, min, max), `consent.marketing`, `jurisdiction`),
so applying version N's changes to the state of version N-1 gives the state of version N.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Any

from google.protobuf import struct_pb2

from mosaic.consent.v1 import consent_pb2
from mosaic.events.v1 import profile_updated_pb2
from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2

DAY = 86400
EPOCH = date(1970, 1, 1)
TIME_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def python_of(value: struct_pb2.Value) -> Any:
    """A protobuf Value as plain Python: float, str, bool, None, dict or list."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        fields = value.struct_value.fields  # key by key: a map's items() is a Python generator
        return {k: python_of(fields[k]) for k in fields}
    if kind == "list_value":
        return [python_of(v) for v in value.list_value.values]
    return None


def time_of(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 string trait (a date alone is midnight UTC); None if not one.
    Only what looks like a time reaches the cache: e-mails and names, unique to each profile,
    would only push the times out of it."""
    return _time_of(text) if TIME_LIKE.match(text) else None


@lru_cache(maxsize=65536)
def _time_of(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@lru_cache(maxsize=4096)
def epoch_day(day: str) -> int:
    return (date.fromisoformat(day) - EPOCH).days


# One day of an event series: (count, sum, min, max); sum, min and max are 0 without a property.
Partial = tuple[int, float, float, float]
PARTIAL_FIELDS = ("count", "sum", "min", "max")


@dataclass
class ProfileState:
    profile_id: str
    version: int = 0
    traits: dict[str, Any] = field(default_factory=dict)
    computed: dict[str, Any] = field(default_factory=dict)
    identities: dict[str, int] = field(default_factory=dict)  # identifier type -> how many
    counters: dict[tuple[int, str], int] = field(default_factory=dict)
    consent: dict[str, float] = field(default_factory=dict)  # purpose -> granted until (epoch s)
    jurisdiction: int = consent_pb2.JURISDICTION_UNSPECIFIED
    series: dict[tuple[int, str], Partial] = field(default_factory=dict)

    @classmethod
    def of_profile(cls, profile: profile_pb2.Profile) -> ProfileState:
        # The maps are read key by key: their items() and values() are Python generators over
        # the same lookups (a sixth of a view's rebuild went to them).
        traits, computed, counters = profile.traits, profile.computed_traits, profile.daily_counters
        series = profile.daily_series
        return cls(
            profile.profile_id,
            profile.version,
            _present({k: python_of(traits[k].value) for k in traits}),
            _present({k: python_of(computed[k]) for k in computed}),
            _types(profile.identities),
            {(epoch_day(c.day), c.event): c.count for c in map(counters.__getitem__, counters) if c.count},
            {
                purpose: _until(d.granted, d.expires_at.ToJsonString() if d.HasField("expires_at") else None)
                for purpose, d in profile.consent.items()
            },
            profile.jurisdiction,
            series={
                (epoch_day(s.day), s.series): (s.count, s.sum, s.min, s.max)
                for s in map(series.__getitem__, series)
                if s.count
            },
        )

    def apply(self, update: profile_updated_pb2.ProfileUpdated) -> None:
        """Move to the update's version by its changes (the caller checks the version follows)."""
        for change in update.changes:
            name, _, key = change.path.partition(".")
            present = change.HasField("new_value")
            if name == "traits":
                _put(self.traits, key, python_of(change.new_value) if present else None)
            elif name == "computed_traits":
                _put(self.computed, key, python_of(change.new_value) if present else None)
            elif name == "identities":
                # A change of an identifier already there (its last_seen) has both values.
                step = int(present) - int(change.HasField("old_value"))
                kind = key.partition(":")[0]
                _put(self.identities, kind, (self.identities.get(kind, 0) + step) or None)
            elif name == "daily_counters":
                day, _, event = key.partition("|")
                count = int(change.new_value.number_value) if present else 0
                _put(self.counters, (epoch_day(day), event), count or None)
            elif name == "daily_series":
                day, _, series = key.partition("|")
                _put(self.series, (epoch_day(day), series), _partial(change.new_value) if present else None)
            elif name == "consent":
                decision = python_of(change.new_value) if present else None
                until = _until(decision.get("granted") is True, decision.get("expires_at")) if decision else None
                _put(self.consent, key, until)
            elif name == "jurisdiction":
                self.jurisdiction = _jurisdiction(change.new_value.string_value) if present else 0
        self.version = update.version

    def identity_types(self) -> set[str]:
        return {kind for kind, n in self.identities.items() if n > 0}


def _partial(value: struct_pb2.Value) -> Partial | None:
    fields = value.struct_value.fields
    for name in PARTIAL_FIELDS:
        if name not in fields:  # not fields[name]: a map's [] of a message adds the entry
            raise InvalidArgument("changes.new_value", f"a daily_series change needs {name!r}")
    count = int(fields["count"].number_value)
    return (
        (count, fields["sum"].number_value, fields["min"].number_value, fields["max"].number_value) if count else None
    )


def _jurisdiction(name: str) -> int:
    try:
        return consent_pb2.Jurisdiction.Value(name)
    except ValueError:
        raise InvalidArgument("changes.new_value", f"jurisdiction {name!r} is not a Jurisdiction") from None


def _until(granted: bool, expires_at: str | None) -> float:
    """Until when a decision grants its purpose: never (0), for good (inf), or its expiry."""
    if not granted:
        return 0.0
    return math.inf if expires_at is None else time_of(expires_at) or 0.0


def _types(identities) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in identities:
        kind = key.partition(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _present(values: dict) -> dict:
    """Without nulls: a null trait is a missing one, as a change that clears it says."""
    return {k: v for k, v in values.items() if v is not None}


def _put(mapping: dict, key, value) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value
