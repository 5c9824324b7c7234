"""Property: for any sequence of events (duplicates and late arrivals included), the profile
rebuilt as of the moment after the i-th event equals the events up to it folded in memory."""

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform.bus import Bus
from mosaic.platform.config import PlatformSettings
from mosaic.profile.v1 import profile_pb2
from profile_service import computed, history
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.fold import FoldRules, fold
from profile_service.profiles import Profiles
from profile_service.store import model, open_store

NOW = int(time.time())
# An event series beside the built-in traits: its daily_series go through the snapshots too.
SERIES = profile_pb2.ComputedTraitDefinition(
    name="big_orders",
    aggregation=profile_pb2.AGGREGATION_DAILY,
    event="Order Completed",
    property="revenue",
    filters=[
        profile_pb2.PropertyFilter(
            property="revenue", equals={"number_value": 100}, operator=profile_pb2.FILTER_OPERATOR_GREATER_OR_EQUAL
        )
    ],
)
DEFINITIONS = [*computed.BUILT_IN, SERIES]

event_strategy = st.builds(
    lambda n, offset, kind, plan, revenue: (n, offset, kind, plan, revenue),
    st.integers(0, 6),  # message number: repeats are duplicates
    st.integers(-5 * 86400, 0),  # event time: arrives in any order
    st.sampled_from(["identify", "order"]),
    st.sampled_from(["free", "pro", "enterprise"]),
    st.integers(1, 500),
)


def to_event(spec) -> resolved_pb2.ResolvedEvent:
    n, offset, kind, plan, revenue = spec
    e = event_pb2.Event(message_id=f"m{n}", user_id="u", timestamp=timestamp_pb2.Timestamp(seconds=NOW + offset - n))
    if kind == "identify":
        e.type = event_pb2.EVENT_TYPE_IDENTIFY
        e.traits.update({"plan": plan})
    else:
        e.type, e.event = event_pb2.EVENT_TYPE_TRACK, "Order Completed"
        e.properties.update({"revenue": revenue})
    return resolved_pb2.ResolvedEvent(profile_id="p", event=e)


def expected_after(events: list[resolved_pb2.ResolvedEvent]) -> profile_pb2.Profile:
    """The in-memory model: fold each distinct message once, in arrival order."""
    profile, seen = profile_pb2.Profile(profile_id="p"), set()
    states: dict[str, dict] = {}
    now = datetime.now(timezone.utc)
    for resolved in events:
        if resolved.event.message_id in seen:
            continue
        seen.add(resolved.event.message_id)
        fold(profile, resolved, FoldRules(), now)
        for definition in DEFINITIONS:
            computed.update(definition, states.setdefault(definition.name, {}), resolved.event)
        computed.refresh(profile, DEFINITIONS, states, now, 90)
        profile.version += 1
    return profile


async def check(nats_url: str, data_dir: str, specs) -> None:
    platform = PlatformSettings.from_env(
        "profile", {"MOSAIC_AUTH": "off", "MOSAIC_NATS_URL": nats_url, "MOSAIC_DATA_DIR": data_dir}
    )
    store = await open_store(platform)
    await store.create_definition(SERIES)
    bus = await Bus.connect(nats_url, "profile", platform.partitions)
    await bus.ensure_streams()
    profiles = Profiles(
        store,
        ProfileCache(10, platform.partitions, range(platform.partitions)),
        bus,
        Settings(platform, (), 90, 90, 3, 10),
    )
    try:
        events = [to_event(spec) for spec in specs]
        moments = []
        for resolved in events:
            await profiles.apply(resolved)
            moments.append(timestamp_pb2.Timestamp())
            moments[-1].GetCurrentTime()
        for i, moment in enumerate(moments):
            rebuilt = await profiles.at_time("p", moment)
            assert rebuilt == expected_after(events[: i + 1]), f"after event {i}: {json.dumps(specs[: i + 1])}"
    finally:
        await bus.close()
        await store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(event_strategy, min_size=1, max_size=12))
def test_the_profile_at_any_moment_equals_the_events_folded_up_to_it(nats_server, tmp_path, specs):
    asyncio.run(check(nats_server.url, str(tmp_path / uuid.uuid4().hex), specs))


@settings(max_examples=2000, deadline=None)
@given(
    st.integers(-62135596800, 253402300799),  # 0001-01-01 to 9999-12-31, Timestamp's range
    st.one_of(
        st.just(0),
        st.integers(0, 999).map(lambda n: n * 1_000_000),
        st.integers(0, 999_999).map(lambda n: n * 1000),
        st.integers(0, 999_999_999),
    ),
)
def test_a_timestamps_text_is_to_json_strings(seconds, nanos):
    moment = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert history.timestamp_text(moment) == moment.ToJsonString()


@settings(max_examples=2000, deadline=None)
@given(st.integers(-30610224000 * 10**6, 253402300799 * 10**6))  # years 1000 to 9999
def test_a_stored_days_and_months_text_is_strftimes(micros):
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)
    assert model.day_of(micros) == moment.strftime("%Y-%m-%d")
    assert model.month_of(micros) == moment.strftime("%Y-%m")
