"""Identity scenarios, table-driven, on SQLite and on Cassandra.

Each scenario is a list of events in arrival order (their event times are their place in the
list unless given), the groups of identifiers that must end in one profile each (and in
different profiles from each other), the identifiers that must be left unlinked with a
reason, and how many merges must be recorded. Values are written short (`u1`, `a1`) and
made unique per run, so the scenarios share the Cassandra keyspace of this module.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from identity_service import admin, explain
from identity_service.app import components
from identity_service.config import Settings
from identity_service.store import open_store
from mosaic.events.v1 import event_pb2

T = event_pb2.EventType
BASE_SECONDS = 1_700_000_000


def ev(mid: str, at: int | None = None, kind=T.EVENT_TYPE_IDENTIFY, **fields) -> dict:
    return {"mid": mid, "at": at, "type": kind, **fields}


@dataclass
class Scenario:
    name: str
    doc: str
    events: list[dict]
    together: list[set[str]]
    unlinked: dict[str, str] = field(default_factory=dict)  # "type:value" → reason contains
    merges: int = 0
    split_first_merge_then: list[dict] = field(default_factory=list)  # events after a split
    together_after_split: list[set[str]] = field(default_factory=list)


SCENARIOS = [
    Scenario(
        "anonymous browsing then login",
        "Pages seen anonymously, then an identify with the user id: one profile, no merge.",
        [
            ev("m1", anonymous_id="a1", kind=T.EVENT_TYPE_PAGE),
            ev("m2", anonymous_id="a1", user_id="u1", email="Ada@Example.com"),
        ],
        together=[{"anonymous_id:a1", "user_id:u1", "email:ada@example.com"}],
    ),
    Scenario(
        "one user on two devices",
        "Anonymous on a phone and a laptop, then logged in on both: the two anonymous profiles merge.",
        [
            ev("m1", anonymous_id="a1", device="d1"),
            ev("m2", anonymous_id="a2", device="d2"),
            ev("m3", anonymous_id="a1", user_id="u1"),
            ev("m4", anonymous_id="a2", user_id="u1"),
        ],
        together=[{"anonymous_id:a1", "anonymous_id:a2", "device_id:d1", "device_id:d2", "user_id:u1"}],
        merges=1,
    ),
    Scenario(
        "shared family device",
        "Two people log in on one device: two user ids never merge; the device stays with the first.",
        [ev("m1", device="fam", user_id="parent", anonymous_id="a1"), ev("m2", device="fam", user_id="child")],
        together=[{"device_id:fam", "user_id:parent", "anonymous_id:a1"}, {"user_id:child"}],
        unlinked={"device_id:fam": "limit user_id=1"},
    ),
    Scenario(
        "an e-mail change",
        "The same user id with a new e-mail: both e-mails stay on the one profile.",
        [ev("m1", user_id="u1", email="old@example.com"), ev("m2", user_id="u1", email="new@example.com")],
        together=[{"user_id:u1", "email:old@example.com", "email:new@example.com"}],
    ),
    Scenario(
        "a CRM row with only an e-mail, later linked to a user id",
        "A CRM import knows only the e-mail (and its row id as anonymous id); the login joins it.",
        [
            ev("m1", anonymous_id="crm-row-7", email="crm@example.com", source="crm"),
            ev("m2", user_id="u1", email="CRM@example.com"),
        ],
        together=[{"anonymous_id:crm-row-7", "email:crm@example.com", "user_id:u1"}],
    ),
    Scenario(
        "alias",
        "alias(previousId=a1 → userId=u1) folds the anonymous profile into the known user's.",
        [
            ev("m1", anonymous_id="a1", kind=T.EVENT_TYPE_PAGE),
            ev("m2", user_id="u1"),
            ev("m3", user_id="u1", previous_id="a1", kind=T.EVENT_TYPE_ALIAS),
        ],
        together=[{"anonymous_id:a1", "user_id:u1"}],
        merges=1,
    ),
    Scenario(
        "blocked value null",
        "SDKs that send the string 'null' as user id do not glue strangers together.",
        [ev("m1", user_id="null", anonymous_id="a1"), ev("m2", user_id="null", anonymous_id="a2")],
        together=[{"anonymous_id:a1"}, {"anonymous_id:a2"}],
        unlinked={"user_id:null": "blocked value"},
    ),
    Scenario(
        "identifier limit reached",
        "A sixth e-mail on one profile is left unlinked (limit 5); the event still resolves.",
        [ev(f"m{i}", user_id="u1", email=f"e{i}@example.com") for i in range(1, 7)],
        together=[{"user_id:u1", *(f"email:e{i}@example.com" for i in range(1, 6))}],
        unlinked={"email:e6@example.com": "limit email=5"},
    ),
    Scenario(
        "merge chain A+B then (A+B)+C",
        "Three anonymous profiles joined two at a time: two merges, one profile, the oldest survives.",
        [
            ev("m1", anonymous_id="a"),
            ev("m2", anonymous_id="b"),
            ev("m3", anonymous_id="c"),
            ev("m4", anonymous_id="a", email="ab@example.com"),
            ev("m5", anonymous_id="b", email="ab@example.com"),
            ev("m6", anonymous_id="c", user_id="abc"),
            ev("m7", anonymous_id="b", user_id="abc"),
        ],
        together=[{"anonymous_id:a", "anonymous_id:b", "anonymous_id:c", "email:ab@example.com", "user_id:abc"}],
        merges=2,
    ),
    Scenario(
        "out-of-order events",
        "The login arrives before the anonymous pages it follows: the same groups as in order.",
        [
            ev("m3", at=3, anonymous_id="a2", user_id="u1"),
            ev("m1", at=1, anonymous_id="a1"),
            ev("m2", at=2, anonymous_id="a1", user_id="u1"),
            ev("m0", at=0, anonymous_id="a2", kind=T.EVENT_TYPE_PAGE),
        ],
        together=[{"anonymous_id:a1", "anonymous_id:a2", "user_id:u1"}],
        merges=1,  # in event-time order too: a2's pages and a1's profile meet at the second login
    ),
    Scenario(
        "the same event twice",
        "A redelivered event changes nothing: no second profile, no second merge.",
        [
            ev("m1", anonymous_id="a1"),
            ev("m2", anonymous_id="a2"),
            ev("m3", anonymous_id="a1", email="x@example.com"),
            ev("m4", anonymous_id="a2", email="x@example.com"),
            ev("m4", anonymous_id="a2", email="x@example.com"),
            ev("m1", anonymous_id="a1"),
        ],
        together=[{"anonymous_id:a1", "anonymous_id:a2", "email:x@example.com"}],
        merges=1,
    ),
    Scenario(
        "a split after a wrong merge",
        "A shop's shared e-mail merged a customer with a stranger; the split restores both, and "
        "the same e-mail can no longer merge them again (a later event leaves it unlinked).",
        [
            ev("m1", anonymous_id="a1", user_id="p1"),
            ev("m2", anonymous_id="a2", email="info@shop.example"),
            ev("m3", anonymous_id="a1", email="info@shop.example"),
        ],
        together=[{"anonymous_id:a1", "user_id:p1", "anonymous_id:a2", "email:info@shop.example"}],
        merges=1,
        split_first_merge_then=[ev("m4", anonymous_id="a1", email="info@shop.example")],
        together_after_split=[{"anonymous_id:a1", "user_id:p1"}, {"anonymous_id:a2", "email:info@shop.example"}],
    ),
]


@pytest.fixture
async def parts(store_settings):
    store = await open_store(store_settings)
    yield components(store, Settings(store_settings))
    await store.close()


def build(spec: dict, ns: str, index: int) -> event_pb2.Event:
    event = event_pb2.Event(type=spec["type"], message_id=f"{ns}-{spec['mid']}", source_id=spec.get("source", "web"))
    for name in ("user_id", "anonymous_id", "previous_id"):
        if name in spec:
            event.__setattr__(name, spec[name] if spec[name] == "null" else f"{ns}-{spec[name]}")
    if "email" in spec:
        event.traits.update({"email": f"{ns}-{spec['email']}"})
    if "device" in spec:
        event.context.update({"device": {"id": f"{ns}-{spec['device']}"}})
    at = spec["at"] if spec["at"] is not None else index
    event.timestamp.FromSeconds(BASE_SECONDS + at)
    return event


def scoped(name: str, ns: str) -> tuple[str, str]:
    id_type, value = name.split(":", 1)
    return id_type, value if value == "null" else f"{ns}-{value}".lower() if id_type == "email" else f"{ns}-{value}"


async def assert_groups(resolver, groups: list[set[str]], ns: str) -> None:
    profiles = []
    for group in groups:
        found = {await resolver.lookup(scoped(name, ns)) for name in group}
        assert len(found) == 1 and None not in found, f"{group} spread over {found}"
        profiles.append(found.pop())
    assert len(set(profiles)) == len(profiles), f"groups {groups} share a profile"
    for profile_id, group in zip(profiles, groups, strict=False):
        component = await resolver.component(profile_id)
        members = await resolver.store.members(sorted(component.profiles))
        held = {(m.id_type, m.id_value) for found in members.values() for m in found}
        assert held == {scoped(name, ns) for name in group}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario(parts, scenario: Scenario):
    resolver, _, events = parts
    ns = uuid.uuid4().hex[:8]
    resolved = [await events.resolve(build(spec, ns, i)) for i, spec in enumerate(scenario.events)]
    await assert_groups(resolver, scenario.together, ns)

    roots = {r.profile_id for r in resolved}
    merges = {m.merge_id for p in roots for m in await explain.history(resolver, await resolver.root(p))}
    assert len(merges) == scenario.merges
    for name, reason in scenario.unlinked.items():
        left = [u for p in roots for u in await resolver.store.unlinked_of(p)]
        assert any((u.identifier.type, u.identifier.value) == scoped(name, ns) and reason in u.reason for u in left), (
            left
        )

    if scenario.split_first_merge_then:
        survivor = await resolver.root(resolved[-1].profile_id)
        [merge] = await explain.history(resolver, survivor)
        await admin.split(resolver, merge.merge_id, "shared shop e-mail")
        for i, spec in enumerate(scenario.split_first_merge_then):
            after = await events.resolve(build(spec, ns, 100 + i))
            assert after.resolution.plan.unlinked[0][1] == "profiles were split by an operator"
        await assert_groups(resolver, scenario.together_after_split, ns)
        [kept] = await explain.history(resolver, survivor)
        assert kept.merge_id == merge.merge_id and kept.split_reason == "shared shop e-mail", "the audit keeps both"


async def test_every_arrival_order_builds_the_groups_of_event_time_order(parts):
    """Out-of-order delivery: all 24 orders of four events give the same groups and merges."""
    import itertools

    resolver, _, events = parts
    specs = [
        ev("m0", at=0, anonymous_id="a2"),
        ev("m1", at=1, anonymous_id="a1"),
        ev("m2", at=2, anonymous_id="a1", user_id="u1"),
        ev("m3", at=3, anonymous_id="a2", user_id="u1", email="u1@example.com"),
    ]
    for order in itertools.permutations(specs):
        ns = uuid.uuid4().hex[:8]
        for i, spec in enumerate(order):
            await events.resolve(build(spec, ns, i))
        await assert_groups(
            resolver, [{"anonymous_id:a1", "anonymous_id:a2", "user_id:u1", "email:u1@example.com"}], ns
        )
