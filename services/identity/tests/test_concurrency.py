"""Several identity processes against one Cassandra keyspace, with randomised interleavings,
end with the graph one process builds from the same events one at a time.

Two shapes: worker processes running the resolver four events at a time each, in their own
random order, starting at one instant (the tightest races); and three `identity_service`
replicas consuming events.raw through nats-server, each with its share of the partitions
(the production path, outbox included). The workload is people whose events each carry one
to three of their identifiers, so the same identifiers are resolved at once by different
processes and the same profiles are merged from several sides. "The same graph" is: the same
identifiers together in one profile, and no profile breaking a limit. A shared family device
is added on top: who gets it depends on which login comes first (in a serial run too), so for
it the test checks that it went to exactly one of the two people, never both.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from identity_service import explain
from identity_service.app import components
from identity_service.config import Settings
from identity_service.store import open_store
from mosaic.cli.mesh import Mesh
from mosaic.events.v1 import identity_changed_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.testing.plugin import eventually

WORKER = Path(__file__).with_name("concurrent_worker.py")
_spec = importlib.util.spec_from_file_location("identity_concurrent_worker", WORKER)
assert _spec is not None and _spec.loader is not None  # a .py file
_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_worker)
build = _worker.build
PROCESSES = 3


def workload(ns: str, rng: random.Random, people: int = 30) -> list[dict]:
    events: list[dict] = []
    at = 1_700_000_000_000
    for p in range(people):
        ids = {
            "user_id": f"{ns}-u{p}",
            "anonymous_id": [f"{ns}-a{p}-1", f"{ns}-a{p}-2"],
            "email": f"{ns}-p{p}@example.com",
            "device": f"{ns}-d{p}",
        }
        steps: list[dict[str, object]] = [  # connected: every identifier meets the user id through some event
            {"anonymous_id": ids["anonymous_id"][0]},
            {"anonymous_id": ids["anonymous_id"][1], "device": ids["device"]},
            {"anonymous_id": ids["anonymous_id"][0], "email": ids["email"]},
            {"anonymous_id": ids["anonymous_id"][1], "user_id": ids["user_id"]},
            {"user_id": ids["user_id"], "email": ids["email"]},
            {"device": ids["device"], "anonymous_id": ids["anonymous_id"][1]},
        ]
        for step in steps:
            at += rng.randint(1, 1000)
            events.append({"mid": f"{ns}-{uuid.uuid4().hex}", "at": at, **step})
    for member in ("parent", "child"):  # one device, two user ids: never one profile
        events.append(
            {
                "mid": f"{ns}-{member}",
                "at": at + 1,
                "user_id": f"{ns}-{member}",
                "device": f"{ns}-family",
                "anonymous_id": f"{ns}-{member}-a",
            }
        )
    rng.shuffle(events)
    return events


def keys_of(spec: dict) -> list[tuple[str, str]]:
    found = [(k, spec[k]) for k in ("user_id", "anonymous_id") if spec.get(k)]
    if spec.get("email"):
        found.append(("email", spec["email"]))
    if spec.get("device"):
        found.append(("device_id", spec["device"]))
    return found


async def graph(resolver, events: list[dict]) -> tuple[set[frozenset], dict]:
    """The identifiers grouped by profile, and each identifier's profile."""
    keys = sorted({key for spec in events for key in keys_of(spec)})
    owner = {key: await resolver.lookup(key) for key in keys}
    groups: dict[str, set] = {}
    for key, profile_id in owner.items():
        if profile_id:
            groups.setdefault(profile_id, set()).add(key)
    return {frozenset(g) for g in groups.values()}, owner


def without(groups: set[frozenset], key) -> set[frozenset]:
    return {frozenset(g - {key}) for g in groups if g - {key}}


@pytest.fixture
async def cassandra_settings(cassandra_keyspace):
    environ = {
        "MOSAIC_AUTH": "off",
        "MOSAIC_STORE": "cassandra",
        "MOSAIC_CASSANDRA_PORT": str(cassandra_keyspace.port),
        "MOSAIC_CASSANDRA_KEYSPACE": cassandra_keyspace.keyspace,
        "MOSAIC_IDENTITY_LOCK_LEASE": "2",
    }
    return environ


@pytest.mark.parametrize("seed", [1, 2])
async def test_replicas_racing_on_shared_identifiers_build_the_serial_graph(cassandra_settings, tmp_path, seed):
    rng = random.Random(seed)
    ns = f"s{seed}{uuid.uuid4().hex[:6]}"
    events = workload(ns, rng)
    shares = [events[i::PROCESSES] for i in range(PROCESSES)]
    start_at = time.time() + 4.0  # after every process has connected
    jobs = []
    for index, share in enumerate(shares):
        path = tmp_path / f"job-{index}.json"
        path.write_text(
            json.dumps(
                {"environ": cassandra_settings, "events": share, "seed": seed * 10 + index, "start_at": start_at}
            )
        )
        jobs.append(
            subprocess.Popen([sys.executable, str(WORKER), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    retries = 0
    for job in jobs:
        output, errors = await asyncio.to_thread(job.communicate, timeout=240)
        assert job.returncode == 0, errors.decode()[-3000:]
        retries += json.loads(output.decode().strip().splitlines()[-1])["retries"]
    print(f"decisions redone under contention: {retries}")  # shown with -s: evidence the races happen

    settings = Settings.from_env(cassandra_settings)
    store = await open_store(settings.platform)
    resolver, _, serial_events = components(store, settings)
    try:
        concurrent_groups, owner = await graph(resolver, events)
        for group in concurrent_groups:  # no profile breaks the user id limit
            profile_id = owner[next(iter(group))]
            component = await resolver.component(profile_id)
            assert component.counts["user_id"] <= 1, group

        # The serial run: the same events, renamed into a namespace of their own, one at a time.
        serial_ns = f"{ns}x"
        renamed = json.loads(json.dumps(events).replace(ns, serial_ns))
        for spec in sorted(renamed, key=lambda s: s["at"]):
            await serial_events.resolve(build(spec))
        serial_groups, _ = await graph(resolver, renamed)
    finally:
        await store.close()

    def renamed_back(groups):
        return {frozenset((t, v.replace(serial_ns, ns)) for t, v in g) for g in groups}

    family = ("device_id", f"{ns}-family")
    assert without(concurrent_groups, family) == without(renamed_back(serial_groups), family)
    holders = [g for g in concurrent_groups if family in g]
    assert len(holders) == 1 and len({k for k in holders[0] if k[0] == "user_id"}) == 1
    assert len(concurrent_groups) == 30 + 2


async def test_identity_replicas_consuming_events_raw_build_the_serial_graph(cassandra_settings, nats_server, tmp_path):
    """Three `identity_service` processes, each leasing its share of six partitions, consume the
    events as ingestion publishes them (keyed by the first id), so one person's events are
    spread over replicas; the graph equals a serial run, and every event is resolved once."""
    rng = random.Random(3)
    ns = f"r{uuid.uuid4().hex[:6]}"
    events = workload(ns, rng, people=20)
    environ = {
        **cassandra_settings,
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_PARTITIONS": "6",
        "MOSAIC_GRACE_SECONDS": "2",
        "OTEL_TRACES_EXPORTER": "none",
    }
    replicas = [Mesh(environ, tmp_path / f"replica-{i}") for i in range(PROCESSES)]
    bus = await Bus.connect(nats_server.url, "test", 6)
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.start_service, "identity")
        for spec in events:
            event = build(spec)
            await bus.publish(topics.EVENTS_RAW, event.user_id or event.anonymous_id, event, event.message_id)

        async def all_resolved() -> bool:
            info = await bus._js.stream_info(topics.EVENTS_RESOLVED.stream)
            return info.state.messages == len(events)

        await eventually(all_resolved, timeout=120)
        settings = Settings.from_env(cassandra_settings)
        store = await open_store(settings.platform)
        resolver, _, serial_events = components(store, settings)
        try:
            concurrent_groups, owner = await graph(resolver, events)
            homes = await resolver.claims(sorted({key for spec in events for key in keys_of(spec)}))
            holding = set()
            for profile_id in {claim.profile_id for claim in homes.values()}:
                holding |= {m.merge_id for m in await explain.history(resolver, profile_id)}

            ours = {claim.profile_id for claim in homes.values()}

            async def published() -> bool:
                # The replicas also drain what the worker tests above left in this keyspace's
                # outbox (their processes had no bus): only this test's profiles are compared.
                info = await bus._js.stream_info(topics.IDENTITY_MERGED.stream)
                found = [
                    identity_changed_pb2.IdentityMerged.FromString(
                        (await bus._js.get_msg(topics.IDENTITY_MERGED.stream, seq)).data
                    )
                    for seq in range(info.state.first_seq, info.state.last_seq + 1)
                    if info.state.messages
                ]
                mine = [m.merge_id for m in found if m.merged_profile_ids[0] in ours]
                assert len(mine) == len(set(mine)) and set(mine) == holding, (mine, holding)
                return True

            assert holding, "the workload merges profiles"
            await eventually(published, timeout=30)
            serial_ns = f"{ns}x"
            renamed = json.loads(json.dumps(events).replace(ns, serial_ns))
            for spec in sorted(renamed, key=lambda s: s["at"]):
                await serial_events.resolve(build(spec))
            serial_groups, _ = await graph(resolver, renamed)
        finally:
            await store.close()
    finally:
        await bus.close()
        for replica in replicas:
            await asyncio.to_thread(replica.stop_service, "identity")
    family = ("device_id", f"{ns}-family")
    back = {frozenset((t, v.replace(serial_ns, ns)) for t, v in g) for g in serial_groups}
    assert without(concurrent_groups, family) == without(back, family)
    assert len(concurrent_groups) == 20 + 2
