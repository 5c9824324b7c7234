"""Campaign schedules and quiet hours: pure logic on fixed clocks."""

from datetime import datetime, timedelta, timezone

import pytest
from google.protobuf import field_mask_pb2

from delivery_service import campaigns, quiet, schedule
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2
from mosaic.platform.errors import InvalidArgument

UTC = timezone.utc
PARIS = schedule.zone_named("Europe/Paris")
RUNNING = campaign_pb2.CAMPAIGN_RUN_STATUS_RUNNING
DONE = campaign_pb2.CAMPAIGN_RUN_STATUS_DONE


def campaign(cron="0 9 * * MON", created=datetime(2025, 1, 1, tzinfo=UTC)) -> campaign_pb2.Campaign:
    c = campaign_pb2.Campaign(
        campaign_id="weekly", schedule=campaign_pb2.CampaignSchedule(cron=cron, time_zone="Europe/Paris")
    )
    c.created_at.FromDatetime(created)
    return c


def run(tick: datetime, status=DONE, lease_until: datetime | None = None) -> campaign_pb2.CampaignRun:
    r = campaign_pb2.CampaignRun(status=status)
    r.tick.FromDatetime(tick)
    if lease_until:
        r.lease_until.FromDatetime(lease_until)
    return r


@pytest.mark.parametrize(
    "expression, why",
    [
        ("0 9 * *", "got 4 fields"),
        ("0 9 * * * * *", "got 7 fields"),
        ("61 9 * * *", "out of range"),
        ("0 9 * * 8", "out of range"),
        ("0 0 31 2 *", "failed to find next date"),  # February 31st never comes
        ("@sometimes", "columns"),
        ("", "got 0 fields"),
    ],
)
def test_a_bad_cron_expression_names_the_field_and_the_rule(expression, why):
    with pytest.raises(InvalidArgument) as refused:
        schedule.check_cron(expression, "campaign.schedule.cron")
    assert refused.value.field == "campaign.schedule.cron"
    assert "5 fields (minute hour day-of-month month day-of-week" in refused.value.rule and why in refused.value.rule


@pytest.mark.parametrize("expression", ["0 9 * * MON", "*/15 8-18 * * 1-5", "@daily", "0 0 9 * * MON", "0 9 L * *"])
def test_good_cron_expressions_pass(expression):
    schedule.check_cron(expression, "campaign.schedule.cron")


def test_ticks_are_read_in_the_campaign_zone_winter_and_summer():
    # Monday 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert schedule.latest_tick("0 9 * * MON", PARIS, datetime(2025, 1, 6, 8, 30, tzinfo=UTC)) == datetime(
        2025, 1, 6, 8, 0, tzinfo=UTC
    )
    assert schedule.latest_tick("0 9 * * MON", PARIS, datetime(2025, 7, 7, 7, 0, tzinfo=UTC)) == datetime(
        2025, 7, 7, 7, 0, tzinfo=UTC
    )  # `now` on the tick is due
    assert schedule.next_tick("0 9 * * MON", PARIS, datetime(2025, 1, 6, 8, 0, tzinfo=UTC)) == datetime(
        2025, 1, 13, 8, 0, tzinfo=UTC
    )


def test_a_wall_clock_time_repeated_when_clocks_go_back_fires_once():
    # 26 October 2025, Paris: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    first = datetime(2025, 10, 26, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert schedule.next_tick("30 2 * * *", PARIS, first) == datetime(2025, 10, 27, 1, 30, tzinfo=UTC)
    c = campaign("30 2 * * *")
    second = datetime(2025, 10, 26, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert schedule.decide(c, PARIS, run(first), second + timedelta(seconds=5), grace=3600) is None


def test_a_tick_skipped_by_the_spring_jump_fires_after_it():
    # 30 March 2025, Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    tick = schedule.next_tick("30 2 * * *", PARIS, datetime(2025, 3, 29, 12, 0, tzinfo=UTC))
    assert tick == datetime(2025, 3, 30, 1, 0, tzinfo=UTC)  # 03:00 CEST, once


def test_a_due_tick_fires_once_and_the_next_waits_for_its_time():
    c = campaign()
    monday = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
    assert schedule.decide(c, PARIS, None, monday - timedelta(seconds=1), 3600) is None
    assert schedule.decide(c, PARIS, None, monday + timedelta(seconds=3), 3600) == schedule.Step("fire", monday)
    assert schedule.decide(c, PARIS, run(monday), monday + timedelta(days=2), 3600) is None
    later = monday + timedelta(days=7)
    assert schedule.decide(c, PARIS, run(monday), later, 3600) == schedule.Step("fire", later)


def test_no_tick_before_the_campaign_was_created_fires():
    c = campaign(created=datetime(2025, 1, 6, 8, 0, 30, tzinfo=UTC))  # half a minute after Monday's tick
    assert schedule.decide(c, PARIS, None, datetime(2025, 1, 6, 8, 1, tzinfo=UTC), 3600) is None


def test_a_tick_found_after_the_grace_is_skipped_and_only_the_latest_counts():
    c = campaign()
    # Down from before Monday the 6th to Tuesday the 14th: the 6th and the 13th were missed.
    step = schedule.decide(c, PARIS, None, datetime(2025, 1, 14, 12, 0, tzinfo=UTC), 3600)
    assert step == schedule.Step("skip", datetime(2025, 1, 13, 8, 0, tzinfo=UTC))
    late_but_in_grace = datetime(2025, 1, 13, 8, 50, tzinfo=UTC)
    assert schedule.decide(c, PARIS, None, late_but_in_grace, 3600).action == "fire"


def test_a_running_tick_is_left_to_its_owner_until_its_lease_ends_then_resumed():
    c = campaign()
    monday = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
    claimed = run(monday, RUNNING, lease_until=monday + timedelta(seconds=30))
    assert schedule.decide(c, PARIS, claimed, monday + timedelta(seconds=29), 3600) is None
    assert schedule.decide(c, PARIS, claimed, monday + timedelta(seconds=30), 3600) == schedule.Step("resume", monday)
    # A new tick waits while the last one runs, even when due.
    next_monday = monday + timedelta(days=7)
    still = run(monday, RUNNING, lease_until=next_monday + timedelta(seconds=30))
    assert schedule.decide(c, PARIS, still, next_monday + timedelta(seconds=1), 3600) is None


def test_a_tick_interrupted_and_found_after_the_grace_is_skipped_not_resumed():
    monday = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
    claimed = run(monday, RUNNING, lease_until=monday + timedelta(seconds=30))
    assert schedule.decide(campaign(), PARIS, claimed, monday + timedelta(hours=2), 3600) == schedule.Step(
        "skip", monday
    )


PAUSED = campaign_pb2.CAMPAIGN_RUN_STATUS_PAUSED
MONDAY = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)  # 09:00 in Paris


def test_a_paused_campaign_fires_nothing_and_resumed_never_sends_late_what_came_while_paused():
    c = campaigns.paused(campaign(), MONDAY - timedelta(days=1))
    assert schedule.decide(c, PARIS, None, MONDAY + timedelta(seconds=3), 3600) is None
    # Resumed within the grace of Monday's tick: that tick is not owed, the next Monday's fires.
    c = campaigns.resumed(c, MONDAY + timedelta(minutes=10))
    assert schedule.decide(c, PARIS, None, MONDAY + timedelta(minutes=10, seconds=1), 3600) is None
    next_monday = MONDAY + timedelta(days=7)
    assert schedule.decide(c, PARIS, run(MONDAY - timedelta(days=7)), next_monday, 3600) == schedule.Step(
        "fire", next_monday
    )
    assert campaigns.shown(c, None).next_tick.ToDatetime(UTC) == next_monday


def test_a_tick_a_pause_cut_short_is_finished_once_resumed_within_the_grace_else_skipped():
    cut = run(MONDAY, PAUSED)
    c = campaigns.paused(campaign(), MONDAY + timedelta(seconds=5))
    assert schedule.decide(c, PARIS, cut, MONDAY + timedelta(minutes=1), 3600) is None
    c = campaigns.resumed(c, MONDAY + timedelta(minutes=20))
    assert schedule.decide(c, PARIS, cut, MONDAY + timedelta(minutes=20), 3600) == schedule.Step("resume", MONDAY)
    assert schedule.decide(c, PARIS, cut, MONDAY + timedelta(hours=2), 3600) == schedule.Step("skip", MONDAY)
    # Once it is done, the next tick counts from the resume.
    done = run(MONDAY)
    assert schedule.decide(c, PARIS, done, MONDAY + timedelta(hours=2), 3600) is None


def test_pausing_a_paused_or_resuming_an_active_campaign_changes_nothing():
    active = campaign()
    assert campaigns.resumed(active, MONDAY) is active
    paused = campaigns.paused(active, MONDAY)
    assert campaigns.paused(paused, MONDAY + timedelta(hours=1)) is paused
    assert paused.paused_at.ToDatetime(UTC) == MONDAY and not campaigns.shown(paused, None).HasField("next_tick")


def test_a_new_schedule_counts_from_the_change_and_fires_no_tick_it_would_have_had_before():
    c = campaign()
    new = campaigns.changed(
        c, campaign_pb2.Campaign(schedule=campaign_pb2.CampaignSchedule(cron="0 12 * * *")), ["schedule.cron"]
    )
    campaigns.kept_from(new, c, MONDAY + timedelta(hours=3, minutes=30))  # 12:30 in Paris
    assert new.schedule.cron == "0 12 * * *" and new.created_at == c.created_at
    # Today's 12:00 is within the grace, but it came before the change: tomorrow's is the first.
    assert schedule.decide(new, PARIS, run(MONDAY), MONDAY + timedelta(hours=3, minutes=31), 3600) is None
    tomorrow = datetime(2025, 1, 7, 11, 0, tzinfo=UTC)
    assert schedule.decide(new, PARIS, run(MONDAY), tomorrow, 3600) == schedule.Step("fire", tomorrow)
    # A change that leaves the schedule alone keeps its count.
    renamed = campaigns.changed(c, campaign_pb2.Campaign(name="Weekly news"), ["name"])
    campaigns.kept_from(renamed, c, MONDAY)
    assert not renamed.HasField("active_since") and renamed.name == "Weekly news"


def test_an_update_takes_only_the_masked_fields_and_clears_one_named_and_unset():
    c = campaign()
    c.body_template = "old"
    c.quiet_hours.start, c.quiet_hours.end = "21:00", "08:00"
    change = campaign_pb2.Campaign(name="ignored", schedule=campaign_pb2.CampaignSchedule(cron="0 8 * * *"))
    new = campaigns.changed(c, change, ["schedule.cron", "body_template", "quiet_hours"])
    assert (new.name, new.schedule.cron, new.schedule.time_zone) == ("", "0 8 * * *", "Europe/Paris")
    assert new.body_template == "" and not new.HasField("quiet_hours")
    assert campaigns.mask_paths(field_mask_pb2.FieldMask()) == list(campaigns.WHOLE)


@pytest.mark.parametrize("path", ["campaign_id", "created_at", "paused_at", "schedule.zone", "nonsense"])
def test_an_update_mask_naming_what_may_not_change_names_update_mask(path):
    with pytest.raises(InvalidArgument) as refused:
        campaigns.mask_paths(field_mask_pb2.FieldMask(paths=["name", path]))
    assert refused.value.field == "update_mask" and repr(path) in str(refused.value)


def test_six_fields_read_seconds_first():
    now = datetime(2025, 1, 6, 8, 0, 7, tzinfo=UTC)
    assert schedule.latest_tick("*/5 * * * * *", PARIS, now) == datetime(2025, 1, 6, 8, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize("name", ["Mars/Olympus", "America", "../etc/passwd", "/etc/localtime", "", "x" * 300, 5])
def test_a_missing_or_unknown_zone_trait_is_the_default_zone(name):
    tokyo = schedule.zone_named("Asia/Tokyo")
    assert quiet.person_zone({"timezone": name}, "timezone", tokyo) is tokyo
    assert quiet.person_zone({}, "timezone", tokyo) is tokyo
    assert quiet.person_zone({"timezone": "Europe/Paris"}, "timezone", tokyo).key == "Europe/Paris"


def window(start="21:00", end="08:00") -> quiet.Window | None:
    return quiet.window_of(delivery_pb2.QuietHours(start=start, end=end), "quiet_hours")


def test_quiet_hours_over_midnight_hold_until_the_end_in_the_persons_zone():
    night = window()
    # 22:30 in Paris (winter, UTC+1): held until 08:00 the next morning, Paris time.
    assert night.held_until(PARIS, datetime(2025, 1, 6, 21, 30, tzinfo=UTC)) == datetime(2025, 1, 7, 7, 0, tzinfo=UTC)
    # 06:00 in Paris: held until 08:00 the same morning.
    assert night.held_until(PARIS, datetime(2025, 1, 7, 5, 0, tzinfo=UTC)) == datetime(2025, 1, 7, 7, 0, tzinfo=UTC)
    # The same instant is midday in Tokyo: sent at once.
    assert night.held_until(schedule.zone_named("Asia/Tokyo"), datetime(2025, 1, 7, 3, 0, tzinfo=UTC)) is None


def test_quiet_hours_start_is_inside_and_end_is_outside():
    night = window()
    assert night.held_until(PARIS, datetime(2025, 1, 6, 20, 0, tzinfo=UTC)) is not None  # 21:00 Paris
    assert night.held_until(PARIS, datetime(2025, 1, 7, 7, 0, tzinfo=UTC)) is None  # 08:00 Paris
    assert night.held_until(PARIS, datetime(2025, 1, 6, 19, 59, 59, tzinfo=UTC)) is None  # 20:59:59


def test_quiet_hours_within_a_day_and_across_the_spring_jump():
    lunch = window("12:00", "14:00")
    assert lunch.held_until(UTC, datetime(2025, 1, 6, 13, 0, tzinfo=UTC)) == datetime(2025, 1, 6, 14, 0, tzinfo=UTC)
    assert lunch.held_until(UTC, datetime(2025, 1, 6, 15, 0, tzinfo=UTC)) is None
    # Quiet until 02:30 on the night Paris jumps from 02:00 to 03:00: out just after the jump.
    short = window("23:00", "02:30")
    until = short.held_until(PARIS, datetime(2025, 3, 29, 23, 30, tzinfo=UTC))  # 00:30 CET
    assert datetime(2025, 3, 30, 1, 0, tzinfo=UTC) <= until <= datetime(2025, 3, 30, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "start, end, field, why",
    [
        ("21:00", "", "quiet_hours.end", "is required"),
        ("9pm", "08:00", "quiet_hours.start", "HH:MM"),
        ("21:00", "24:00", "quiet_hours.end", "HH:MM"),
        ("21", "08:00", "quiet_hours.start", "HH:MM"),
        ("21:00+01:00", "08:00", "quiet_hours.start", "HH:MM"),
        ("08:00", "08:00", "quiet_hours.end", "must differ"),
    ],
)
def test_bad_quiet_hours_name_the_field_and_the_rule(start, end, field, why):
    with pytest.raises(InvalidArgument) as refused:
        window(start, end)
    assert refused.value.field == field and why in refused.value.rule


def test_unset_quiet_hours_are_no_window():
    assert quiet.window_of(delivery_pb2.QuietHours(), "quiet_hours") is None
