"""The profile service's CPU per event with no I/O (issue 19): what `Profiles.apply_batch` does
for one event between the store's read and its write, on two shapes of profile.

Per event: the fold, the computed traits, the snapshot's changes, the snapshot, the
`profile.updated` message, and the bytes the store writes (snapshot, latest profile,
aggregates). The pipeline bench's people are young (a handful of events each); a customer of a
real deployment has months of daily counters and dozens of traits, so the second shape gives
each profile 90 days of counters for four event names and 30 traits first.
Run: `uv run --frozen python -m bench fold` (BENCH_FOLD_EVENTS, 20,000).
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform.config import PlatformSettings
from mosaic.profile.v1 import profile_pb2
from profile_service.config import Settings
from profile_service.profiles import Profiles
from profile_service.store import Change, Latest

EVENTS = int(os.environ.get("BENCH_FOLD_EVENTS", "20000"))
PEOPLE = 200
NAMES = ("Product Viewed", "Order Completed", "page", "Email Opened")


class _Recorder:
    """Stands in for the bus: keeps what would be published (pure logic, no NATS)."""

    def __init__(self) -> None:
        self.sent = 0

    async def publish_many(self, topic, messages, contexts=None) -> None:
        self.sent += len(messages)


def _event(person: int, n: int, at: datetime) -> resolved_pb2.ResolvedEvent:
    """The pipeline bench's mix: 10 % identify, 80 % product views, 10 % orders."""
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(at)
    event = event_pb2.Event(message_id=f"m{person}-{n}", user_id=f"u{person}", source_id="bench", timestamp=when)
    roll = n % 10
    if roll == 0:
        event.type = event_pb2.EVENT_TYPE_IDENTIFY
        event.traits.update({"email": f"u{person}@example.com", "plan": random.choice(("free", "pro"))})
    else:
        event.type = event_pb2.EVENT_TYPE_TRACK
        event.event = "Order Completed" if roll == 1 else "Product Viewed"
        event.properties.update({"sku": f"sku-{n % 50}", "revenue": 10.0 + n % 90})
    resolved = resolved_pb2.ResolvedEvent(profile_id=f"p{person}", event=event)
    resolved.identifiers.add(type="user_id", value=f"u{person}")
    return resolved


def _aged(profile_id: str, now: datetime) -> profile_pb2.Profile:
    profile = profile_pb2.Profile(profile_id=profile_id, version=200, event_count=5000)
    for day in range(90):
        stamp = (now - timedelta(days=day)).strftime("%Y-%m-%d")
        for name in NAMES:
            counter = profile.daily_counters[f"{stamp}|{name}"]
            counter.day, counter.event, counter.count = stamp, name, 3
    for i in range(30):
        trait = profile.traits[f"trait_{i}"]
        trait.value.string_value = f"value {i}"
        trait.set_at.FromDatetime(now - timedelta(days=30))
    profile.first_seen.FromDatetime(now - timedelta(days=90))
    profile.last_seen.FromDatetime(now - timedelta(days=1))
    return profile


async def _run(shape: str, profiles: Profiles, recorder: _Recorder) -> None:
    now = datetime.now(timezone.utc)
    latest = {
        f"p{i}": Latest(_aged(f"p{i}", now) if shape == "aged" else profile_pb2.Profile(profile_id=f"p{i}"))
        for i in range(PEOPLE)
    }
    states: dict[str, dict] = {pid: {} for pid in latest}
    events = [_event(i % PEOPLE, i // PEOPLE, now - timedelta(seconds=EVENTS - i)) for i in range(EVENTS)]
    definitions = await profiles.definitions.all()
    written = 0
    started = time.process_time()
    for resolved in events:
        pid = resolved.profile_id
        change = Change(latest[pid])
        snapshot, message = profiles._fold(resolved, change, states[pid], definitions)
        latest[pid] = change.latest
        await profiles._publish_many([(0, snapshot, message)], None)
        written += len(snapshot.SerializeToString()) + len(change.latest.profile.SerializeToString())
        written += len(json.dumps(states[pid]))
    spent = time.process_time() - started
    print(
        f"{shape:>5} profiles: {spent / EVENTS * 1e6:,.1f} µs of CPU per event"
        f" ({EVENTS:,} events, {len(latest[pid].profile.daily_counters)} counters and"
        f" {len(latest[pid].profile.traits)} traits in the last; {written / EVENTS:,.0f} bytes written per event)",
        flush=True,
    )


class _NoDefinitions:
    async def definitions(self) -> list:
        return []


async def main() -> None:
    platform = PlatformSettings.from_env("profile", {"MOSAIC_AUTH": "off"})
    settings = Settings(platform, (), 90, 90, 20, 0)
    recorder = _Recorder()
    profiles = Profiles(_NoDefinitions(), None, recorder, settings)  # type: ignore[arg-type]
    random.seed(7)
    for shape in ("young", "aged"):
        await _run(shape, profiles, recorder)
