"""Campaigns end to end on real servers: segment members from the real segmentation service,
consent from the real consent service, webhooks to a real HTTP receiver and e-mail to a real
SMTP server; two delivery replicas and a restart on one store and one nats-server; updates,
pauses and resumes."""

import asyncio
from collections import Counter
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from delivery_service.store import open_store
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.events.v1 import profile_updated_pb2
from mosaic.platform import topics
from mosaic.segmentation.v1 import segment_pb2
from mosaic.segmentation.v1 import segmentation_service_pb2 as seg
from mosaic.testing.plugin import eventually

Status = delivery_pb2.DeliveryStatus
EVERY_TWO_SECONDS = "*/2 * * * * *"


async def members_of(bus, segments, segment_id: str, plans: dict[str, str]) -> None:
    """A segment of the `pro` plan's people, their profiles updated as the profile service does."""
    await segments.CreateSegment(
        seg.CreateSegmentRequest(
            segment=segment_pb2.Segment(segment_id=segment_id, name=segment_id, definition='traits.plan = "pro"')
        )
    )
    for profile_id, plan in plans.items():
        update = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=1)
        update.changes.add(path="traits.plan", new_value=struct_pb2.Value(string_value=plan))
        await bus.publish(topics.PROFILE_UPDATED, profile_id, update, f"{profile_id}:1")
    wanted = sorted(p for p, plan in plans.items() if plan == "pro")

    async def listed():
        return sorted([m.profile_id async for m in segments.ListMembers(seg.ListMembersRequest(segment_id=segment_id))])

    await eventually(lambda: _equal(listed(), wanted))


async def _equal(value, wanted) -> bool:
    return await value == wanted


async def news(stub, receiver, destination_id="news", **fields):
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id=destination_id,
                webhook_url=receiver.url(f"/{destination_id}"),
                purpose="marketing",
                body_template="the destination's own text",
                **fields,
            )
        )
    )


def campaign(**fields) -> campaign_pb2.Campaign:
    values = {
        "campaign_id": "flash",
        "destination_id": "news",
        "segment_id": "pro",
        "schedule": campaign_pb2.CampaignSchedule(cron=EVERY_TWO_SECONDS, time_zone="Europe/Paris"),
        **fields,
    }
    return campaign_pb2.Campaign(**values)


def ticks(receiver) -> dict[str, list[str]]:
    """The profile ids the receiver got, by campaign tick."""
    by_tick: dict[str, list[str]] = {}
    for request in receiver.requests:
        by_tick.setdefault(request.body["tick"], []).append(request.body["profile_id"])
    return by_tick


async def test_a_campaign_goes_to_the_consenting_members_once_a_tick_across_replicas_and_a_restart(
    with_segments, stub, bus, segments, consent, webhook_receiver, replicas
):
    await members_of(bus, segments, "pro", {"p-1": "pro", "p-2": "pro", "p-3": "free"})
    await consent("p-1")
    await consent("p-2", granted=False)
    await news(stub, webhook_receiver)
    second = await replicas.start()
    created = await stub.CreateCampaign(
        pb.CreateCampaignRequest(campaign=campaign(body_template="Flash sale for {{ profile_id }}"))
    )
    assert created.campaign.next_tick.ToDatetime() > created.campaign.created_at.ToDatetime()
    await eventually(lambda: len(ticks(webhook_receiver)) >= 2)
    await replicas.stop(second)  # one replica goes away, another comes on the same store
    await replicas.start()
    seen = len(ticks(webhook_receiver))
    await eventually(lambda: len(ticks(webhook_receiver)) >= seen + 2)
    await stub.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id="flash"))

    for tick, people in ticks(webhook_receiver).items():
        assert people == ["p-1"], f"tick {tick}: {people}"  # once each tick, only with consent
    keys = Counter(r.headers["Idempotency-Key"] for r in webhook_receiver.requests)
    assert max(keys.values()) == 1
    first = webhook_receiver.requests[0]
    stamp = datetime.fromisoformat(first.body["tick"]).strftime("%Y%m%dT%H%M%SZ")
    assert first.headers["Idempotency-Key"] == f"news:campaign:flash:{stamp}:p-1"
    assert first.body | {"tick": "-", "delivery_id": "-"} == {
        "type": "campaign",
        "campaign_id": "flash",
        "segment_id": "pro",
        "tick": "-",
        "delivery_id": "-",
        "profile_id": "p-1",
        "message": "Flash sale for p-1",  # the campaign's template, not the destination's
    }
    refused = (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id="p-2"))).deliveries
    assert refused and {(r.trigger, r.status) for r in refused} == {
        ("campaign:flash", Status.DELIVERY_STATUS_SUPPRESSED)
    }
    assert not (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id="p-3"))).deliveries
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetCampaign(pb.GetCampaignRequest(campaign_id="flash"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_tick_left_running_by_a_replica_that_died_is_resumed_without_sending_twice(
    with_segments, service, stub, bus, segments, consent, webhook_receiver
):
    await members_of(bus, segments, "pro", {"p-1": "pro", "p-4": "pro"})
    await consent("p-1")
    await consent("p-4")
    await news(stub, webhook_receiver)
    yearly = campaign_pb2.CampaignSchedule(cron="0 0 1 1 *", time_zone="UTC")
    await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(schedule=yearly)))
    # A replica claimed a tick, sent p-1's delivery and died: its lease has run out.
    tick = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=30)
    store = await open_store(service.settings)
    try:
        dead = campaign_pb2.CampaignRun(status=campaign_pb2.CAMPAIGN_RUN_STATUS_RUNNING, owner="dead-replica")
        dead.tick.FromDatetime(tick)
        dead.lease_until.FromDatetime(tick + timedelta(seconds=5))
        assert await store.save_campaign_run("flash", dead, 0)
        sent = delivery_pb2.Delivery(
            delivery_id=f"news:campaign:flash:{tick:%Y%m%dT%H%M%SZ}:p-1",
            destination_id="news",
            profile_id="p-1",
            status=Status.DELIVERY_STATUS_SENT,
        )
        await store.save_delivery(sent)
    finally:
        await store.close()

    async def done():
        got = (await stub.GetCampaign(pb.GetCampaignRequest(campaign_id="flash"))).campaign
        return got.last_run.status == campaign_pb2.CAMPAIGN_RUN_STATUS_DONE and got

    finished = await eventually(done)
    assert finished.last_run.members == 2 and "resumed from dead-replica" in finished.last_run.detail
    assert finished.last_run.tick.ToDatetime(timezone.utc) == tick
    await eventually(lambda: webhook_receiver.requests)
    assert [r.body["profile_id"] for r in webhook_receiver.requests] == ["p-4"]


async def test_an_email_campaign_renders_its_own_templates_with_the_members_traits(
    with_segments, with_profiles, set_traits, stub, segments, consent, smtp_receiver
):
    # Traits flow as in production: profile folds them, segmentation reads profile.updated.
    await segments.CreateSegment(
        seg.CreateSegmentRequest(
            segment=segment_pb2.Segment(segment_id="pro", name="pro", definition='traits.plan = "pro"')
        )
    )
    await set_traits("p-5", email="ada@example.com", first_name="Ada", plan="pro")
    await consent("p-5")
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="mail",
                kind=delivery_pb2.DESTINATION_KIND_EMAIL,
                purpose="marketing",
                body_template="the destination's own text",
                email=delivery_pb2.EmailSettings(
                    smtp_host="127.0.0.1", smtp_port=smtp_receiver.port, from_address="news@mosaic.example"
                ),
            )
        )
    )
    await stub.CreateCampaign(
        pb.CreateCampaignRequest(
            campaign=campaign(
                destination_id="mail",
                subject_template="This week, {{ first_name }}",
                body_template="Dear {{ first_name }}, the {{ plan }} offers of the week.",
            )
        )
    )
    mail = (await eventually(smtp_receiver.snapshot))[0]
    await stub.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id="flash"))
    assert mail.recipients == ["ada@example.com"] and mail.message["Subject"] == "This week, Ada"
    assert mail.message.get_payload().strip() == "Dear Ada, the pro offers of the week."
    assert mail.message["Idempotency-Key"].startswith("mail:campaign:flash:")


def violation(error: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest.FieldViolation:
    request = error_details_pb2.BadRequest()
    rpc_status.from_call(error).details[0].Unpack(request)
    return request.field_violations[0]


async def test_a_bad_campaign_is_refused_naming_the_field_and_the_rule(
    with_segments, stub, bus, segments, webhook_receiver
):
    await members_of(bus, segments, "pro", {"p-1": "pro"})
    await news(stub, webhook_receiver)
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="ads",
                kind=delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC,
                segment_id="pro",
                purpose="advertising",
                webhook_url=webhook_receiver.url("/ads"),
            )
        )
    )
    paris = "Europe/Paris"
    cases = [
        (campaign(schedule=campaign_pb2.CampaignSchedule(cron="0 9 * *")), "campaign.schedule.cron", "5 fields"),
        (
            campaign(schedule=campaign_pb2.CampaignSchedule(cron="0 25 * * *", time_zone=paris)),
            "campaign.schedule.cron",
            "out of range",
        ),
        (
            campaign(schedule=campaign_pb2.CampaignSchedule(cron="0 9 * * MON", time_zone="Paris")),
            "campaign.schedule.time_zone",
            "IANA",
        ),
        (campaign(destination_id="nowhere"), "campaign.destination_id", "names no destination"),
        (campaign(destination_id="ads"), "campaign.destination_id", "audience sync"),
        (campaign(segment_id="nobody"), "campaign.segment_id", "names no segment"),
        (campaign(campaign_id="Flash Sale"), "campaign.campaign_id", "lower-case"),
        (campaign(body_template="{{ oops"), "campaign.body_template", "does not compile"),
        (campaign(subject_template="Hi"), "campaign.subject_template", "e-mail"),
        (
            campaign(quiet_hours=delivery_pb2.QuietHours(start="22:00")),
            "campaign.quiet_hours.end",
            "HH:MM",
        ),
    ]
    for bad, field, rule in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=bad))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        found = violation(refused.value)
        assert found.field == field and rule in found.description, (field, found)
    assert (await stub.ListCampaigns(pb.ListCampaignsRequest())).campaigns == []

    weekly = campaign_pb2.CampaignSchedule(cron="0 9 * * MON")  # no zone: the deployment's default
    created = await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(schedule=weekly)))
    assert created.campaign.schedule.time_zone == "UTC"
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(schedule=weekly)))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as used:
        await stub.DeleteDestination(pb.DeleteDestinationRequest(destination_id="news"))
    assert used.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "flash" in used.value.details()
    [listed] = (await stub.ListCampaigns(pb.ListCampaignsRequest())).campaigns
    next_tick = listed.next_tick.ToDatetime(timezone.utc)
    assert next_tick.weekday() == 0 and (next_tick.hour, next_tick.minute) == (9, 0)


async def test_without_segmentation_campaigns_are_refused_saying_why(stub):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign()))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "MOSAIC_SEGMENTATION_ADDRESS" in refused.value.details()


async def test_a_paused_campaign_fires_no_tick_and_once_resumed_never_sends_one_it_missed(
    with_segments, stub, bus, segments, consent, webhook_receiver
):
    await members_of(bus, segments, "pro", {"p-1": "pro"})
    await consent("p-1")
    await news(stub, webhook_receiver)
    await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign()))
    await eventually(lambda: ticks(webhook_receiver))
    paused = (await stub.PauseCampaign(pb.PauseCampaignRequest(campaign_id="flash"))).campaign
    assert paused.HasField("paused_at") and not paused.HasField("next_tick")
    again = (await stub.PauseCampaign(pb.PauseCampaignRequest(campaign_id="flash"))).campaign
    assert again.paused_at == paused.paused_at  # pausing a paused campaign changes nothing
    [listed] = (await stub.ListCampaigns(pb.ListCampaignsRequest())).campaigns
    assert listed.paused_at == paused.paused_at
    await asyncio.sleep(3)  # a tick or more comes due while paused
    resumed_at = datetime.now(timezone.utc)
    resumed = (await stub.ResumeCampaign(pb.ResumeCampaignRequest(campaign_id="flash"))).campaign
    assert not resumed.HasField("paused_at") and resumed.active_since.ToDatetime(timezone.utc) >= resumed_at
    assert resumed.next_tick.ToDatetime() > resumed.active_since.ToDatetime()
    paused_at = paused.paused_at.ToDatetime(timezone.utc)
    await eventually(lambda: any(datetime.fromisoformat(t) > resumed_at for t in ticks(webhook_receiver)))
    await stub.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id="flash"))
    fired = sorted(datetime.fromisoformat(t) for t in ticks(webhook_receiver))
    assert not [t for t in fired if paused_at < t <= resumed_at], fired  # none of the paused ones, ever
    assert all(people == ["p-1"] for people in ticks(webhook_receiver).values())


async def test_a_tick_a_pause_cut_short_is_finished_on_resume_without_sending_twice(
    with_segments, service, stub, bus, segments, consent, webhook_receiver
):
    await members_of(bus, segments, "pro", {"p-1": "pro", "p-4": "pro"})
    await consent("p-1")
    await consent("p-4")
    await news(stub, webhook_receiver)
    yearly = campaign_pb2.CampaignSchedule(cron="0 0 1 1 *", time_zone="UTC")
    await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(schedule=yearly)))
    await stub.PauseCampaign(pb.PauseCampaignRequest(campaign_id="flash"))
    # As the scheduler leaves a tick it was planning when the pause came: p-1 planned and sent.
    tick = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=30)
    store = await open_store(service.settings)
    try:
        cut = campaign_pb2.CampaignRun(
            status=campaign_pb2.CAMPAIGN_RUN_STATUS_PAUSED,
            owner="a-replica",
            members=1,
            detail="paused after 1 members",
        )
        cut.tick.FromDatetime(tick)
        assert await store.save_campaign_run("flash", cut, 0)
        sent = delivery_pb2.Delivery(
            delivery_id=f"news:campaign:flash:{tick:%Y%m%dT%H%M%SZ}:p-1",
            destination_id="news",
            profile_id="p-1",
            status=Status.DELIVERY_STATUS_SENT,
        )
        await store.save_delivery(sent)
    finally:
        await store.close()
    await asyncio.sleep(1)  # the scheduler looks five times: a paused campaign's cut tick waits
    shown = (await stub.GetCampaign(pb.GetCampaignRequest(campaign_id="flash"))).campaign
    assert shown.last_run.status == campaign_pb2.CAMPAIGN_RUN_STATUS_PAUSED and not webhook_receiver.requests
    await stub.ResumeCampaign(pb.ResumeCampaignRequest(campaign_id="flash"))

    async def done():
        got = (await stub.GetCampaign(pb.GetCampaignRequest(campaign_id="flash"))).campaign
        return got.last_run.status == campaign_pb2.CAMPAIGN_RUN_STATUS_DONE and got

    finished = await eventually(done)
    assert finished.last_run.members == 2 and "after: paused after 1 members" in finished.last_run.detail
    assert finished.last_run.tick.ToDatetime(timezone.utc) == tick
    await eventually(lambda: webhook_receiver.requests)
    assert [r.body["profile_id"] for r in webhook_receiver.requests] == ["p-4"]


async def test_an_update_changes_the_named_fields_and_the_next_ticks_use_them(
    with_segments, stub, bus, segments, consent, webhook_receiver
):
    await members_of(bus, segments, "pro", {"p-1": "pro"})
    await consent("p-1")
    await news(stub, webhook_receiver)
    created = (
        await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(body_template="Old offer")))
    ).campaign
    await eventually(lambda: webhook_receiver.requests)
    change = campaign_pb2.Campaign(campaign_id="flash", name="Flash", body_template="New offer for {{ profile_id }}")
    mask = field_mask_pb2.FieldMask(paths=["name", "body_template"])
    updated = (await stub.UpdateCampaign(pb.UpdateCampaignRequest(campaign=change, update_mask=mask))).campaign
    assert (updated.name, updated.body_template, updated.schedule) == ("Flash", change.body_template, created.schedule)
    assert updated.created_at == created.created_at and updated.active_since == created.active_since
    await eventually(lambda: webhook_receiver.requests[-1].body["message"] == "New offer for p-1")
    await stub.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id="flash"))
    messages = [r.body["message"] for r in webhook_receiver.requests]
    first_new = messages.index("New offer for p-1")
    assert set(messages[:first_new]) == {"Old offer"} and set(messages[first_new:]) == {"New offer for p-1"}


async def test_a_bad_update_is_refused_naming_the_field_and_changes_nothing(
    with_segments, stub, bus, segments, webhook_receiver
):
    await members_of(bus, segments, "pro", {"p-1": "pro"})
    await news(stub, webhook_receiver)
    weekly = campaign_pb2.CampaignSchedule(cron="0 9 * * MON", time_zone="Europe/Paris")
    before = (await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(schedule=weekly)))).campaign
    flash = {"campaign_id": "flash"}
    cases = [
        (campaign_pb2.Campaign(**flash), ["created_at"], "update_mask", "may name"),
        (campaign_pb2.Campaign(**flash), ["schedule.every"], "update_mask", "'schedule.every'"),
        (
            campaign_pb2.Campaign(**flash, schedule=campaign_pb2.CampaignSchedule(cron="0 9 * *")),
            ["schedule.cron"],
            "campaign.schedule.cron",
            "5 fields",
        ),
        (
            campaign_pb2.Campaign(**flash, segment_id="nobody"),
            ["segment_id"],
            "campaign.segment_id",
            "names no segment",
        ),
        (campaign_pb2.Campaign(**flash), ["destination_id"], "campaign.destination_id", "is required"),
        (campaign_pb2.Campaign(name="x"), ["name"], "campaign.campaign_id", "is required"),
    ]
    for change, paths, field, rule in cases:
        request = pb.UpdateCampaignRequest(campaign=change, update_mask=field_mask_pb2.FieldMask(paths=paths))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdateCampaign(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        found = violation(refused.value)
        assert found.field == field and rule in found.description, (field, found)
    after = (await stub.GetCampaign(pb.GetCampaignRequest(campaign_id="flash"))).campaign
    assert after == before
    for call, request in (
        (stub.UpdateCampaign, pb.UpdateCampaignRequest(campaign=campaign_pb2.Campaign(campaign_id="nope", name="x"))),
        (stub.PauseCampaign, pb.PauseCampaignRequest(campaign_id="nope")),
        (stub.ResumeCampaign, pb.ResumeCampaignRequest(campaign_id="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await call(request)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
