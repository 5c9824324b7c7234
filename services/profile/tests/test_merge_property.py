"""Property: with merges and splits interleaved with events, each profile as of any moment
equals the events it owned then, folded in memory (a merged profile owns the events of the
profile merged into it; a split gives each side back its own)."""

import asyncio
import time
import uuid
from datetime import datetime, timezone

from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.events.v1 import event_pb2, identity_changed_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.config import PlatformSettings
from mosaic.profile.v1 import profile_pb2
from profile_service import computed
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.fold import FoldRules, fold
from profile_service.merges import MergeHandler
from profile_service.profiles import Profiles
from profile_service.store import open_store

NOW = int(time.time())
# An event series beside the built-in traits (a count of the smaller orders): its daily_series
# go through merges and splits too.
SERIES = profile_pb2.ComputedTraitDefinition(
    name="small_orders",
    aggregation=profile_pb2.AGGREGATION_DAILY,
    event="Order Completed",
    filters=[
        profile_pb2.PropertyFilter(
            property="revenue", equals={"number_value": 100}, operator=profile_pb2.FILTER_OPERATOR_LESS_THAN
        )
    ],
)
DEFINITIONS = [*computed.BUILT_IN, SERIES]
DELIVERY = Delivery("x", 0, 1, 1, "")

step = st.one_of(
    st.tuples(
        st.just("event"),
        st.sampled_from("ab"),
        st.integers(-4 * 86400, 0),
        st.sampled_from(["identify", "order"]),
        st.sampled_from(["free", "pro", "enterprise"]),
        st.integers(1, 300),
    ),
    st.tuples(st.just("merge")),
    st.tuples(st.just("split")),
)


def make_event(i: int, who: str, offset: int, kind: str, plan: str, revenue: int) -> event_pb2.Event:
    # Unique event times (the index in the nanos): "the later one wins" never needs a tie-break.
    e = event_pb2.Event(
        message_id=f"m{i}", user_id=who, timestamp=timestamp_pb2.Timestamp(seconds=NOW + offset, nanos=i)
    )
    if kind == "identify":
        e.type = event_pb2.EVENT_TYPE_IDENTIFY
        e.traits.update({"plan": plan, f"seen_{who}": True})
    else:
        e.type, e.event = event_pb2.EVENT_TYPE_TRACK, "Order Completed"
        e.properties.update({"revenue": revenue})
    return e


def model(events: list[event_pb2.Event], profile_id: str) -> profile_pb2.Profile:
    profile = profile_pb2.Profile(profile_id=profile_id)
    states: dict[str, dict] = {}
    now = datetime.now(timezone.utc)
    for e in events:
        resolved = resolved_pb2.ResolvedEvent(
            profile_id=profile_id, event=e, identifiers=[identity_pb2.Identifier(type="user_id", value=e.user_id)]
        )
        fold(profile, resolved, FoldRules(), now)
        for definition in DEFINITIONS:
            computed.update(definition, states.setdefault(definition.name, {}), e)
    computed.refresh(profile, DEFINITIONS, states, now, 90)
    return profile


def same(actual: profile_pb2.Profile, expected: profile_pb2.Profile) -> bool:
    a, e = profile_pb2.Profile(), profile_pb2.Profile()
    a.CopyFrom(actual)
    e.CopyFrom(expected)
    for p in (a, e):
        p.ClearField("version")
        p.ClearField("profile_id")
    return a == e


async def check(nats_url: str, data_dir: str, steps) -> None:
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
    merges = MergeHandler(profiles)
    own: dict[str, list[event_pb2.Event]] = {"a": [], "b": []}  # each person's events, in arrival order
    merged, merge_count, checks = False, 0, []
    try:
        for i, s in enumerate(steps):
            if s[0] == "event":
                e = make_event(i, *s[1:])
                own[e.user_id].append(e)
                target = "A" if merged or e.user_id == "a" else "B"  # identity resolves b to A while merged
                await profiles.apply(
                    resolved_pb2.ResolvedEvent(
                        profile_id=target,
                        event=e,
                        identifiers=[identity_pb2.Identifier(type="user_id", value=e.user_id)],
                    )
                )
            elif s[0] == "merge" and not merged and own["a"] and own["b"]:
                merge_count += 1
                await merges.merged(
                    identity_changed_pb2.IdentityMerged(
                        merge_id=f"merge-{merge_count}", survivor_profile_id="A", merged_profile_ids=["B"]
                    ),
                    DELIVERY,
                )
                merged = True
            elif s[0] == "split" and merged:
                await merges.split(
                    identity_changed_pb2.IdentitySplit(
                        merge_id=f"merge-{merge_count}",
                        split_id=f"split-{merge_count}",
                        survivor_profile_id="A",
                        restored_profile_ids=["B"],
                    ),
                    DELIVERY,
                )
                merged = False
            else:
                continue
            moment = timestamp_pb2.Timestamp()
            moment.GetCurrentTime()
            expected_a = model(own["a"] + (own["b"] if merged else []), "A")
            checks.append((moment, expected_a, None if merged else model(own["b"], "B"), i))
        for moment, expected_a, expected_b, i in checks:
            if expected_a.event_count:
                assert same(await profiles.at_time("A", moment), expected_a), f"A after step {i}: {steps[: i + 1]}"
            if expected_b is not None and expected_b.event_count:
                assert same(await profiles.at_time("B", moment), expected_b), f"B after step {i}: {steps[: i + 1]}"
    finally:
        await bus.close()
        await store.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=4, max_size=16))
def test_profiles_as_of_any_moment_equal_what_they_owned_through_merges_and_splits(nats_server, tmp_path, steps):
    asyncio.run(check(nats_server.url, str(tmp_path / uuid.uuid4().hex), steps))
