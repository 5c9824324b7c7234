"""Property: events applied in batches of any size and grouping (two profiles interleaved,
duplicates within a batch and across batches, late arrivals) leave every profile, every version
and every moment exactly as applying them one at a time would."""

import asyncio
import time
import uuid
from datetime import datetime, timezone

from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.config import PlatformSettings
from mosaic.profile.v1 import profile_pb2
from profile_service import computed
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.fold import FoldRules, fold
from profile_service.profiles import Profiles
from profile_service.store import open_store

NOW = int(time.time())

event_strategy = st.tuples(
    st.sampled_from(["p", "q"]),  # profile
    st.integers(0, 8),  # message number: repeats are duplicates
    st.integers(-3 * 86400, 0),  # event time: arrives in any order
    st.sampled_from(["identify", "order"]),
    st.sampled_from(["free", "pro"]),
    st.integers(1, 500),
)


def to_event(spec, run: str) -> resolved_pb2.ResolvedEvent:
    name, n, offset, kind, plan, revenue = spec
    profile_id = f"{run}-{name}"  # new ids each example: JetStream remembers published ids 2 minutes
    e = event_pb2.Event(
        message_id=f"{profile_id}{n}", user_id=profile_id, timestamp=timestamp_pb2.Timestamp(seconds=NOW + offset - n)
    )
    if kind == "identify":
        e.type = event_pb2.EVENT_TYPE_IDENTIFY
        e.traits.update({"plan": plan, "email": f"{profile_id}{n}@example.com"})
    else:
        e.type, e.event = event_pb2.EVENT_TYPE_TRACK, "Order Completed"
        e.properties.update({"revenue": revenue})
    return resolved_pb2.ResolvedEvent(profile_id=profile_id, event=e)


def versions(events: list[resolved_pb2.ResolvedEvent], profile_id: str) -> list[profile_pb2.Profile]:
    """The in-memory model: each distinct message of the profile folded once, in arrival order;
    the profile after each version."""
    profile, seen, after = profile_pb2.Profile(profile_id=profile_id), set(), []
    states: dict[str, dict] = {}
    now = datetime.now(timezone.utc)
    for resolved in events:
        if resolved.profile_id != profile_id or resolved.event.message_id in seen:
            continue
        seen.add(resolved.event.message_id)
        fold(profile, resolved, FoldRules(), now)
        for definition in computed.BUILT_IN:
            computed.update(definition, states.setdefault(definition.name, {}), resolved.event)
        computed.refresh(profile, computed.BUILT_IN, states, now, 90)
        profile.version += 1
        after.append(profile_pb2.Profile())
        after[-1].CopyFrom(profile)
    return after


async def check(nats_url: str, data_dir: str, specs, cuts) -> None:
    platform = PlatformSettings.from_env(
        "profile", {"MOSAIC_AUTH": "off", "MOSAIC_NATS_URL": nats_url, "MOSAIC_DATA_DIR": data_dir}
    )
    store = await open_store(platform)
    bus = await Bus.connect(nats_url, "profile", platform.partitions)
    await bus.ensure_streams()
    before = (await bus._js.stream_info(topics.PROFILE_UPDATED.stream)).state.messages
    profiles = Profiles(
        store,
        ProfileCache(10, platform.partitions, range(platform.partitions)),
        bus,
        Settings(platform, (), 90, 90, 3, 10),
    )
    try:
        run = uuid.uuid4().hex[:8]
        events = [to_event(spec, run) for spec in specs]
        bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
        moments = []
        for start, end in zip(bounds, bounds[1:], strict=False):
            await profiles.apply_batch([(resolved, None) for resolved in events[start:end]])
            moments.append((end, timestamp_pb2.Timestamp()))
            moments[-1][1].GetCurrentTime()
        ids = (f"{run}-p", f"{run}-q")
        for profile_id in ids:
            expected = versions(events, profile_id)
            for version, profile in enumerate(expected, start=1):  # one snapshot per change, each exact
                assert await profiles.at_version(profile_id, version) == profile, (profile_id, version, specs, bounds)
            for end, moment in moments:  # GetProfileAt exact after every batch
                so_far = versions(events[:end], profile_id)
                if so_far:
                    assert await profiles.at_time(profile_id, moment) == so_far[-1], (profile_id, end, specs, bounds)
            latest = await store.latest(profile_id)
            assert (latest.profile if latest else None) == (expected[-1] if expected else None)
        updates = (await bus._js.stream_info(topics.PROFILE_UPDATED.stream)).state.messages - before
        assert updates == sum(len(versions(events, pid)) for pid in ids), "one profile.updated per change"
    finally:
        await bus.close()
        await store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(event_strategy, min_size=1, max_size=16), cuts=st.lists(st.integers(0, 16), max_size=5))
def test_batches_of_any_grouping_leave_what_one_event_at_a_time_leaves(nats_server, tmp_path, specs, cuts):
    asyncio.run(check(nats_server.url, str(tmp_path / uuid.uuid4().hex), specs, cuts))
