"""The consent service in-process on a real nats-server: the ledger over gRPC, defaults by
jurisdiction, the GPC signal, consent following merges and splits, the outbox and the cache."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import timestamp_pb2

from consent_service.config import Settings
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as pb
from mosaic.events.v1 import consent_changed_pb2, identity_changed_pb2
from mosaic.platform import topics
from mosaic.platform.server import Service
from mosaic.testing.plugin import eventually


class Changes:
    """Every consent.changed message, as a subscriber sees it, with its message id."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, consent_changed_pb2.ConsentChanged]] = []

    async def listen(self, service: Service) -> None:
        async def on_message(msg) -> None:
            self.seen.append((msg.headers.get("Nats-Msg-Id"), consent_changed_pb2.ConsentChanged.FromString(msg.data)))

        assert service.runtime is not None  # started
        await service.runtime.bus._nc.subscribe(topics.CONSENT_CHANGED.wildcard, cb=on_message)


def grant(pid: str, purpose: str = "marketing", granted: bool = True, **fields) -> pb.SetConsentRequest:
    return pb.SetConsentRequest(
        decision=consent_pb2.ConsentDecision(profile_id=pid, purpose=purpose, granted=granted, **fields)
    )


async def check(stub, pid: str, purpose: str = "marketing", **fields) -> pb.CheckConsentResponse:
    return await stub.CheckConsent(pb.CheckConsentRequest(profile_id=pid, purpose=purpose, **fields))


async def test_a_decision_is_recorded_with_its_evidence_answered_and_announced_once(service, stub):
    changes = Changes()
    await changes.listen(service)
    proof = consent_pb2.ConsentProof(form_id="banner", tcf_string="CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA")
    decided = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    request = grant("p-1", proof=proof, actor="ada", decided_at=decided)
    first = await stub.SetConsent(request)
    again = await stub.SetConsent(request)  # a retried call: the same entry, the same message id
    assert first.decision.change_id and first.decision == again.decision
    assert first.decision.source == "api" and first.decision.legal_basis == consent_pb2.LEGAL_BASIS_CONSENT
    answer = await check(stub, "p-1")
    assert answer.granted and answer.reason == "granted" and answer.decision.proof == proof
    await eventually(lambda: changes.seen)
    await asyncio.sleep(0.3)
    assert [m for m, _ in changes.seen] == [f"consent:{first.decision.change_id}"] * len(changes.seen)
    stream = await service.runtime.bus._js.stream_info(topics.CONSENT_CHANGED.stream)
    assert stream.state.messages == 1  # the repeated publish was dropped by its message id
    assert changes.seen[0][1].person_id == "p-1" and changes.seen[0][1].decision.actor == "ada"


async def test_without_a_decision_gdpr_is_opt_in_and_ccpa_opt_out(stub):
    gdpr = await check(stub, "nobody")
    assert (gdpr.granted, gdpr.by_default, gdpr.reason) == (False, True, "opt-in default")
    ccpa = await check(stub, "nobody", jurisdiction=consent_pb2.JURISDICTION_CCPA)
    assert (ccpa.granted, ccpa.by_default, ccpa.reason) == (True, True, "opt-out default")
    await stub.SetConsent(grant("ca-1", granted=False, jurisdiction=consent_pb2.JURISDICTION_CCPA))
    # The person's own jurisdiction, from their decisions, decides the other purposes' defaults.
    assert (await check(stub, "ca-1", "analytics")).granted
    assert not (await check(stub, "ca-1")).granted


async def test_gpc_opts_out_of_sale_and_sharing_only(stub):
    await stub.SetConsent(grant("g-1", "advertising"))
    assert (await check(stub, "g-1", "advertising")).granted
    live = await check(stub, "g-1", "advertising", global_privacy_control=True)
    assert (live.granted, live.reason) == (False, "global privacy control")
    recorded = await stub.SetConsent(
        pb.SetConsentRequest(
            decision=consent_pb2.ConsentDecision(profile_id="g-1", source="web"), global_privacy_control=True
        )
    )
    assert sorted(d.purpose for d in recorded.recorded) == ["advertising", "sale_sharing"]
    assert not (await check(stub, "g-1", "advertising")).granted
    ccpa_marketing = await check(stub, "g-1", "marketing_email", jurisdiction=consent_pb2.JURISDICTION_CCPA)
    assert ccpa_marketing.granted  # GPC is about sale and sharing, not e-mail


async def test_withdrawal_and_expiry_end_a_grant(stub):
    await stub.SetConsent(grant("w-1", decided_at=timestamp_pb2.Timestamp(seconds=100)))
    await stub.SetConsent(
        pb.SetConsentRequest(
            decision=consent_pb2.ConsentDecision(
                profile_id="w-1",
                purpose="marketing",
                change=consent_pb2.CONSENT_CHANGE_WITHDRAW,
                decided_at=timestamp_pb2.Timestamp(seconds=200),
            )
        )
    )
    assert (await check(stub, "w-1")).reason == "withdrawn"
    await stub.SetConsent(
        grant("e-1", decided_at=timestamp_pb2.Timestamp(seconds=100), expires_at=timestamp_pb2.Timestamp(seconds=200))
    )
    expired = await check(stub, "e-1")
    assert (expired.granted, expired.reason) == (False, "expired")


@pytest.mark.parametrize(
    "request_, field",
    [
        (grant("p", "telepathy"), "decision.purpose"),
        (grant(""), "decision.profile_id"),
        (grant("p", actor="x" * 300), "decision.actor"),
        (
            pb.SetConsentRequest(
                decision=consent_pb2.ConsentDecision(
                    profile_id="p", purpose="marketing", granted=False, expires_at=timestamp_pb2.Timestamp(seconds=9)
                )
            ),
            "decision.expires_at",
        ),
        (
            pb.SetConsentRequest(decision=consent_pb2.ConsentDecision(profile_id="p", purpose="marketing", change=42)),  # type: ignore[arg-type]  # not a ConsentChange, on purpose
            "decision.change",
        ),
    ],
)
async def test_a_bad_decision_is_refused_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetConsent(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")


async def test_bad_reads_name_the_field(stub):
    for call, field in [
        (stub.CheckConsent(pb.CheckConsentRequest(profile_id="p", purpose="Not A Name")), "purpose"),
        (stub.CheckConsent(pb.CheckConsentRequest(purpose="marketing")), "profile_id"),
        (stub.ListConsentHistory(pb.ListConsentHistoryRequest(profile_id="p", page_token="forged")), "page_token"),
        (stub.ListConsentHistory(pb.ListConsentHistoryRequest(profile_id="p", page_size=5000)), "page_size"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(f"{field}: ")


async def test_consent_follows_a_merge_and_a_split_undoes_it(service, stub):
    bus = service.runtime.bus
    await stub.SetConsent(grant("phone-profile", decided_at=timestamp_pb2.Timestamp(seconds=100)))
    assert not (await check(stub, "web-profile")).granted  # cached: the notice must drop it
    merge = identity_changed_pb2.IdentityMerged(
        merge_id="m-1", survivor_profile_id="web-profile", merged_profile_ids=["phone-profile"]
    )
    await bus.publish(topics.IDENTITY_MERGED, "web-profile", merge, "m-1")
    await bus.publish(topics.IDENTITY_MERGED, "web-profile", merge, "m-1-redelivered")
    await eventually(lambda: check_granted(stub, "web-profile"))
    state = await stub.GetConsentState(pb.GetConsentStateRequest(profile_id="phone-profile"))
    assert state.person_id == "web-profile"
    # A decision on the survivor is the person's newest: it answers for the merged profile too.
    await stub.SetConsent(
        pb.SetConsentRequest(
            decision=consent_pb2.ConsentDecision(
                profile_id="web-profile",
                purpose="marketing",
                granted=False,
                decided_at=timestamp_pb2.Timestamp(seconds=200),
            )
        )
    )
    assert not (await check(stub, "phone-profile")).granted
    history = await stub.ListConsentHistory(pb.ListConsentHistoryRequest(profile_id="phone-profile"))
    assert [d.profile_id for d in history.decisions] == ["phone-profile", "web-profile"]
    split = identity_changed_pb2.IdentitySplit(
        merge_id="m-1", split_id="s-1", survivor_profile_id="web-profile", restored_profile_ids=["phone-profile"]
    )
    await bus.publish(topics.IDENTITY_SPLIT, "web-profile", split, "s-1")
    await eventually(lambda: check_granted(stub, "phone-profile"))
    assert not (await check(stub, "web-profile")).granted


def decided(person: consent_pb2.PersonConsent) -> dict[str, bool]:
    return {d.purpose: d.granted for d in person.decisions}


async def test_every_notice_carries_the_whole_consent_of_its_person_and_a_split_announces_each_side(service, stub):
    changes = Changes()
    await changes.listen(service)
    bus = service.runtime.bus
    await stub.SetConsent(grant("s-web", "analytics", jurisdiction=consent_pb2.JURISDICTION_CCPA))
    await stub.SetConsent(grant("s-web", decided_at=timestamp_pb2.Timestamp(seconds=100)))
    await stub.SetConsent(grant("s-phone", "advertising", granted=False))
    # A late decision (older than the person's newest on the purpose) does not win the state.
    await stub.SetConsent(grant("s-web", granted=False, decided_at=timestamp_pb2.Timestamp(seconds=50)))
    await eventually(lambda: len(changes.seen) == 4)
    by_id = dict(changes.seen)
    last = changes.seen[-1][1]
    assert decided(last.person) == {"analytics": True, "marketing": True}
    assert last.person.jurisdiction == consent_pb2.JURISDICTION_CCPA
    assert all(not d.HasField("proof") for d in last.person.decisions)
    merge = identity_changed_pb2.IdentityMerged(
        merge_id="sm", survivor_profile_id="s-web", merged_profile_ids=["s-phone"]
    )
    await bus.publish(topics.IDENTITY_MERGED, "s-web", merge, "sm")
    await eventually(lambda: "merge:sm" in dict(changes.seen))
    merged = dict(changes.seen)["merge:sm"]
    assert decided(merged.person) == {"analytics": True, "marketing": True, "advertising": False}
    split = identity_changed_pb2.IdentitySplit(
        merge_id="sm", split_id="ss", survivor_profile_id="s-web", restored_profile_ids=["s-phone"]
    )
    await bus.publish(topics.IDENTITY_SPLIT, "s-web", split, "ss")
    await eventually(lambda: "split:sm:s-phone" in dict(changes.seen) and "split:sm" in dict(changes.seen))
    by_id = dict(changes.seen)
    survivor, restored = by_id["split:sm"], by_id["split:sm:s-phone"]
    assert survivor.person_id == "s-web" and decided(survivor.person) == {"analytics": True, "marketing": True}
    assert set(survivor.profile_ids) == {"s-web", "s-phone"}  # both profiles' cached answers change
    assert restored.person_id == "s-phone" and list(restored.profile_ids) == ["s-phone"]
    assert decided(restored.person) == {"advertising": False}


async def test_a_split_that_overtakes_its_merge_leaves_the_merge_undone(service, stub):
    bus = service.runtime.bus
    await stub.SetConsent(grant("b"))
    split = identity_changed_pb2.IdentitySplit(
        merge_id="m-2", split_id="s-2", survivor_profile_id="a", restored_profile_ids=["b"]
    )
    await bus.publish(topics.IDENTITY_SPLIT, "a", split, "s-2")
    await asyncio.sleep(0.5)
    merge = identity_changed_pb2.IdentityMerged(merge_id="m-2", survivor_profile_id="a", merged_profile_ids=["b"])
    await bus.publish(topics.IDENTITY_MERGED, "a", merge, "m-2")
    await bus.publish(
        topics.IDENTITY_MERGED,
        "a",
        identity_changed_pb2.IdentityMerged(merge_id="m-3", survivor_profile_id="c", merged_profile_ids=["d"]),
        "m-3",
    )
    await eventually(lambda: person_of(stub, "d", "c"))  # published after m-2 on its partition
    assert not (await check(stub, "a")).granted


async def person_of(stub, pid: str, person: str) -> bool:
    return (await stub.GetConsentState(pb.GetConsentStateRequest(profile_id=pid))).person_id == person


async def check_granted(stub, pid: str) -> bool:
    return (await check(stub, pid)).granted


async def test_history_is_paginated_oldest_first(stub):
    for second in range(5):
        await stub.SetConsent(
            grant("h-1", granted=second % 2 == 0, decided_at=timestamp_pb2.Timestamp(seconds=second + 1))
        )
    seen, token = [], ""
    while True:
        page = await stub.ListConsentHistory(
            pb.ListConsentHistoryRequest(profile_id="h-1", page_size=2, page_token=token)
        )
        seen += [d.decided_at.seconds for d in page.decisions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [1, 2, 3, 4, 5]


async def test_a_decision_made_while_nats_is_down_is_published_when_it_is_back(service, stub, nats_server):
    nats_server.stop()
    answer = await stub.SetConsent(grant("o-1"))  # the durable write is all a caller waits for
    assert (await check(stub, "o-1")).granted
    nats_server.restart()
    bus = service.runtime.bus

    async def published():
        info = await bus._js.stream_info(topics.CONSENT_CHANGED.stream)
        return info.state.messages == 1

    await eventually(published, timeout=30)
    message = await bus._js.get_last_msg(topics.CONSENT_CHANGED.stream, topics.CONSENT_CHANGED.wildcard)
    assert message.headers["Nats-Msg-Id"] == f"consent:{answer.decision.change_id}"


async def test_another_replicas_decision_reaches_this_replicas_cache(service, stub, start_consent):
    assert not (await check(stub, "r-1")).granted  # now cached here, for 60 s without a notice
    other = await start_consent()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            await consent_service_pb2_grpc.ConsentServiceStub(channel).SetConsent(grant("r-1"))
        await eventually(lambda: check_granted(stub, "r-1"))
    finally:
        await other.stop()


async def test_the_purposes_are_those_configured(start_consent):
    service = await start_consent(MOSAIC_CONSENT_PURPOSES="newsletter,data_broker:sale,crm_sync:gdpr-allowed")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = consent_service_pb2_grpc.ConsentServiceStub(channel)
            listed = await stub.ListPurposes(pb.ListPurposesRequest())
            assert [(p.name, p.sale_or_sharing, p.gdpr_default) for p in listed.purposes] == [
                ("newsletter", False, False),
                ("data_broker", True, False),
                ("crm_sync", False, True),
            ]
            assert (await check(stub, "x", "crm_sync")).granted
            unknown = await check(stub, "x", "marketing")
            assert (unknown.granted, unknown.reason) == (False, "purpose not configured")
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.SetConsent(grant("x", "marketing"))
    finally:
        await service.stop()


async def test_what_a_crash_left_in_the_outbox_is_published_after_a_restart(start_consent):
    from consent_service.ledger import Ledger
    from consent_service.store import open_store

    service = await start_consent()
    settings = service.settings
    await service.stop()
    # A decision written durably by a replica that died before publishing it.
    store = await open_store(settings)
    ledger = Ledger(store, Settings.from_env({"MOSAIC_AUTH": "off"}).purposes, consent_pb2.JURISDICTION_GDPR)
    entry = ledger.normalise(consent_pb2.ConsentDecision(profile_id="crashed", purpose="marketing", granted=True))
    await ledger.record([entry])
    await store.close()
    service = await start_consent()
    try:
        bus = service.runtime.bus

        async def published():
            return (await bus._js.stream_info(topics.CONSENT_CHANGED.stream)).state.messages == 1

        await eventually(published)
        message = await bus._js.get_last_msg(topics.CONSENT_CHANGED.stream, topics.CONSENT_CHANGED.wildcard)
        assert message.headers["Nats-Msg-Id"] == f"consent:{entry.change_id}"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            assert (await check(consent_service_pb2_grpc.ConsentServiceStub(channel), "crashed")).granted
    finally:
        await service.stop()
