"""RepublishConsent's ledger walk, on each store: every person once, under its head, with its
whole consent; a decision recorded while a person's notice is written is announced after it."""

from __future__ import annotations

import uuid

from google.protobuf import timestamp_pb2

from consent_service.ledger import Ledger
from mosaic.consent.v1 import consent_pb2
from mosaic.events.v1 import consent_changed_pb2, identity_changed_pb2
from mosaic.platform.consent import parse

PURPOSES = parse("analytics,marketing,advertising")


def decision(pid: str, purpose: str, granted: bool, seconds: int) -> consent_pb2.ConsentDecision:
    return consent_pb2.ConsentDecision(
        profile_id=pid, purpose=purpose, granted=granted, decided_at=timestamp_pb2.Timestamp(seconds=seconds)
    )


async def pending(store, run: str) -> list[tuple[str, consent_changed_pb2.ConsentChanged]]:
    """This run's notices in the outbox, in the order written."""
    return [
        (e.message_id, consent_changed_pb2.ConsentChanged.FromString(e.payload))
        for e in await store.outbox_pending(100_000)
        if e.message_id.startswith(f"republish:{run}:")
    ]


def decided(change: consent_changed_pb2.ConsentChanged) -> dict[str, bool]:
    return {d.purpose: d.granted for d in change.person.decisions}


async def test_every_person_is_announced_once_under_its_head_with_its_whole_consent(store):
    ledger = Ledger(store, PURPOSES, consent_pb2.JURISDICTION_GDPR)
    web, phone, other = (str(uuid.uuid4()) for _ in range(3))
    await ledger.record([ledger.normalise(decision(web, "analytics", True, 100))])
    await ledger.record([ledger.normalise(decision(phone, "advertising", False, 110))])
    await ledger.record([ledger.normalise(decision(other, "marketing", True, 120))])
    await ledger.merged(
        identity_changed_pb2.IdentityMerged(
            merge_id=str(uuid.uuid4()), survivor_profile_id=web, merged_profile_ids=[phone]
        )
    )
    assert await ledger.republish("r1", page=1) >= 2  # the store may hold other tests' people
    notices = dict(await pending(store, "r1"))
    assert f"republish:r1:{phone}" not in notices, "a merged profile is its person's, announced once"
    person = notices[f"republish:r1:{web}"]
    assert person.person_id == web and set(person.profile_ids) == {web, phone} and person.cause == "republish r1"
    assert decided(person) == {"analytics": True, "advertising": False}
    assert decided(notices[f"republish:r1:{other}"]) == {"marketing": True}


class Racing:
    """The store, where a decision of the person lands just as the first notice is written."""

    def __init__(self, store, ledger: Ledger, late: consent_pb2.ConsentDecision) -> None:
        self.store, self.recorder = store, ledger
        self.late: consent_pb2.ConsentDecision | None = late

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def append(self, decisions, outbox) -> None:
        late, self.late = self.late, None
        if late is not None:
            await self.store.append(decisions, outbox)
            await self.recorder.record([late])  # its own notice says the same; order is what counts
            return
        await self.store.append(decisions, outbox)


async def test_a_decision_recorded_during_the_write_is_in_the_last_notice(store):
    pid = str(uuid.uuid4())
    ledger = Ledger(store, PURPOSES, consent_pb2.JURISDICTION_GDPR)
    await ledger.record([ledger.normalise(decision(pid, "marketing", True, 100))])
    late = ledger.normalise(decision(pid, "marketing", False, 200))
    racing = Ledger(Racing(store, ledger, late), PURPOSES, consent_pb2.JURISDICTION_GDPR)
    await racing._announce("r2", pid)
    notices = await pending(store, "r2")
    # By id, not position: Cassandra's outbox is read shard by shard, in no order of writing.
    by_id = dict(notices)
    assert set(by_id) == {f"republish:r2:{pid}", f"republish:r2:{pid}:1"}
    assert decided(by_id[f"republish:r2:{pid}"]) == {"marketing": True}
    assert decided(by_id[f"republish:r2:{pid}:1"]) == {"marketing": False}
