"""The plain evaluator and the profile state it reads. Pure logic."""

import math
from datetime import datetime, timezone

import pytest
from google.protobuf import struct_pb2

from mosaic.consent.v1 import consent_pb2
from mosaic.events.v1 import profile_updated_pb2
from mosaic.platform.consent import Policy
from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2
from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service import compiler, language, series
from segmentation_service.evaluate import evaluate, next_due
from segmentation_service.state import DAY, ProfileState, epoch_day

NOW = datetime(2026, 3, 31, 12, tzinfo=timezone.utc).timestamp()
TODAY = int(NOW // DAY)


def state(**traits) -> ProfileState:
    return ProfileState("p", 1, traits=traits)


def matches(text: str, profile: ProfileState, now: float = NOW) -> bool:
    _, expression = compiler.definition_of(text=text)
    return evaluate(compiler.compile_all({"s": expression})["s"].expression, profile, now)


@pytest.mark.parametrize(
    ("text", "traits", "expected"),
    [
        ('traits.plan = "pro"', {"plan": "pro"}, True),
        ('traits.plan = "pro"', {"plan": 1.0}, False),
        ('traits.plan != "pro"', {}, False),
        ('traits.plan != "pro"', {"plan": 1.0}, True),
        ("traits.ltv > 100", {"ltv": 101.0}, True),
        ("traits.ltv > 100", {"ltv": "101"}, False),
        ("traits.ltv <= 100", {"ltv": 100.0}, True),
        ("traits.ltv >= 100.5", {"ltv": 100.0}, False),
        ('traits.name < "b"', {"name": "abc"}, True),
        ('traits.plan in ["pro", "team"]', {"plan": "team"}, True),
        ('traits.plan not in ["pro", "team"]', {"plan": "free"}, True),
        ('traits.plan not in ["pro"]', {}, False),
        ('traits.email contains "@acme"', {"email": "a@acme.com"}, True),
        ('traits.email starts with "a@"', {"email": "a@acme.com"}, True),
        ('traits.email ends with ".org"', {"email": "a@acme.com"}, False),
        ('traits.email matches "^[a-z]@acme"', {"email": "a@acme.com"}, True),
        ("traits.nick exists", {"nick": "x"}, True),
        ("traits.nick is missing", {}, True),
        ("traits.vip = true", {"vip": True}, True),
        ("traits.vip = true", {"vip": 1.0}, False),
        ("traits.age between 18 and 30", {"age": 30.0}, True),
        ("traits.age between 18 and 30", {"age": 31.0}, False),
        ('traits.address.city = "Paris"', {"address": {"city": "Paris"}}, True),
        ('traits.address.city = "Paris"', {"address": "Paris"}, False),
        ("traits.address.city is missing", {"address": "Paris"}, True),
        ("traits.signed_up < now - 30d", {"signed_up": "2026-02-01T00:00:00Z"}, True),
        ("traits.signed_up < now - 30d", {"signed_up": "2026-03-15"}, False),
        ('traits.signed_up >= time "2026-03-01"', {"signed_up": "2026-03-15"}, True),
        ("traits.signed_up < now", {"signed_up": "not a time"}, False),
    ],
)
def test_a_trait_condition_matches_as_the_language_says(text, traits, expected):
    assert matches(text, state(**traits)) is expected


def test_computed_traits_and_identity_facts_are_read_from_their_own_places():
    profile = ProfileState("p", 1, traits={"orders": 1.0}, computed={"orders": 3.0}, identities={"email": 1})
    assert matches("computed.orders >= 3", profile) and not matches("traits.orders >= 3", profile)
    assert matches("has email and is anonymous", profile) and not matches("is known", profile)
    profile.identities["user_id"] = 1
    assert matches("is known", profile)


def test_event_counts_read_the_daily_counters_in_the_window():
    profile = ProfileState(
        "p",
        1,
        counters={
            (TODAY, "Order Completed"): 1,
            (TODAY - 29, "Order Completed"): 1,
            (TODAY - 30, "Order Completed"): 5,
            (TODAY - 3, "Email Opened"): 1,
        },
    )
    assert matches('count(event "Order Completed" in last 30d) = 2', profile)
    assert matches('count(event "Order Completed" in last 31d) = 7', profile)
    assert matches('count(event "Order Completed") = 7', profile)
    assert matches('count(event "Order Completed" between now - 30d and now - 1d) = 6', profile)
    assert matches('count(event "Email Opened" in last 14d) > 0', profile)
    assert matches('count(event "Email Opened" in last 3d) = 0', profile)
    assert matches(
        language.render(
            language.parse(
                'traits.plan = "pro" and count(event "Order Completed" in last 30d) >= 2 and not '
                'count(event "Email Opened" in last 2d) > 0'
            )
        ),
        ProfileState("p", 1, {"plan": "pro"}, counters=profile.counters),
    )


def test_an_order_ages_out_of_the_window_as_days_pass():
    profile = ProfileState("p", 1, counters={(TODAY - 29, "Order Completed"): 1})
    recent = 'count(event "Order Completed" in last 30d) > 0'
    assert matches(recent, profile)
    due = next_due(compiler.definition_of(text=recent)[1], profile, NOW)
    assert due == (TODAY + 1) * DAY
    assert not matches(recent, profile, due)


def test_a_relative_time_trait_is_due_when_now_passes_it():
    expression = compiler.definition_of(text="traits.trial_started < now - 14d")[1]
    profile = state(trial_started="2026-03-20T00:00:00Z")
    due = next_due(expression, profile, NOW)
    assert due == datetime(2026, 4, 3, tzinfo=timezone.utc).timestamp()
    assert not evaluate(expression, profile, due - 1) and evaluate(expression, profile, due + 1)


def test_the_state_follows_profile_updated_changes():
    profile = profile_pb2.Profile(profile_id="p", version=1)
    profile.traits["plan"].value.string_value = "free"
    profile.identities["email:a@b.c"].type = "email"
    profile.daily_counters["2026-03-30|Order Completed"].CopyFrom(
        profile_pb2.DailyCounter(day="2026-03-30", event="Order Completed", count=1)
    )
    current = ProfileState.of_profile(profile)
    update = profile_updated_pb2.ProfileUpdated(
        profile_id="p",
        version=2,
        changes=[
            profile_pb2.FieldChange(path="traits.plan", new_value=struct_pb2.Value(string_value="pro")),
            profile_pb2.FieldChange(path="computed_traits.ltv", new_value=struct_pb2.Value(number_value=9)),
            profile_pb2.FieldChange(path="identities.user_id:ada", new_value=struct_pb2.Value(string_value="ada")),
            profile_pb2.FieldChange(
                path="daily_counters.2026-03-30|Order Completed", new_value=struct_pb2.Value(number_value=2)
            ),
            profile_pb2.FieldChange(path="traits.old", old_value=struct_pb2.Value(string_value="x")),
        ],
    )
    current.apply(update)
    assert current.version == 2 and current.traits == {"plan": "pro"} and current.computed == {"ltv": 9.0}
    assert current.identity_types() == {"email", "user_id"}
    assert current.counters == {(epoch_day("2026-03-30"), "Order Completed"): 2}
    assert compiler.read_key("daily_counters.2026-03-30|Order Completed") == "daily_counters.Order Completed"


def test_consent_is_the_persons_decision_else_their_jurisdictions_default():
    gdpr, ccpa = consent_pb2.JURISDICTION_GDPR, consent_pb2.JURISDICTION_CCPA
    assert not matches('consent "marketing"', ProfileState("p", 1))  # the deployment's law: GDPR opt-in
    assert matches('consent "marketing"', ProfileState("p", 1, jurisdiction=ccpa))  # CCPA opt-out
    assert matches('consent "marketing"', ProfileState("p", 1, consent={"marketing": math.inf}, jurisdiction=gdpr))
    assert not matches('consent "marketing"', ProfileState("p", 1, consent={"marketing": 0.0}, jurisdiction=ccpa))
    assert not matches('consent "retired"', ProfileState("p", 1, jurisdiction=ccpa))  # no longer configured
    californian = Policy.from_env({"MOSAIC_CONSENT_JURISDICTION": "ccpa"})
    expression = compiler.definition_of(text='consent "analytics"')[1]
    assert evaluate(expression, ProfileState("p", 1), NOW, californian)


def test_a_grant_that_expires_is_due_then_and_ends_membership():
    expression = compiler.definition_of(text='consent "marketing" and traits.plan = "pro"')[1]
    profile = ProfileState("p", 1, {"plan": "pro"}, consent={"marketing": NOW + 3600})
    due = next_due(expression, profile, NOW)
    assert due == NOW + 3600
    assert evaluate(expression, profile, due - 1) and not evaluate(expression, profile, due)


def test_the_state_follows_consent_changes_of_profile_updated():
    profile = profile_pb2.Profile(profile_id="p", version=1, jurisdiction=consent_pb2.JURISDICTION_CCPA)
    profile.consent["marketing"].granted = True
    profile.consent["analytics"].granted = True
    profile.consent["analytics"].expires_at.FromJsonString("2026-04-01T00:00:00Z")
    current = ProfileState.of_profile(profile)
    expires = datetime(2026, 4, 1, tzinfo=timezone.utc).timestamp()
    assert current.consent == {"marketing": math.inf, "analytics": expires}
    withdrawn = struct_pb2.Value()
    withdrawn.struct_value.update({"granted": False, "change": "withdraw"})
    current.apply(
        profile_updated_pb2.ProfileUpdated(
            profile_id="p",
            version=2,
            changes=[
                profile_pb2.FieldChange(path="consent.marketing", new_value=withdrawn),
                profile_pb2.FieldChange(path="consent.analytics"),
                profile_pb2.FieldChange(path="jurisdiction"),
            ],
        )
    )
    assert current.consent == {"marketing": 0.0} and current.jurisdiction == 0
    assert compiler.read_key("consent.marketing") == "consent.marketing"
    assert compiler.read_key("jurisdiction") == "jurisdiction"


def test_a_segment_tied_to_a_purpose_reads_its_consent_and_a_reference_to_it_does_too():
    tied = pb.Segment(segment_id="vip", purpose="marketing", expression=compiler.definition_of(text="is known")[1])
    compiled = compiler.compile_all(
        {"vip": compiler.tied(tied), "fans": compiler.definition_of(text='in segment "vip"')[1]}
    )
    assert {"consent.marketing", "jurisdiction", "identities"} <= compiled["fans"].reads
    assert compiler.consent_purposes(compiled["fans"]) == ["marketing"]
    known = ProfileState("p", 1, identities={"user_id": 1})
    assert not evaluate(compiled["fans"].expression, known, NOW)
    known.consent["marketing"] = math.inf
    assert evaluate(compiled["fans"].expression, known, NOW)


def series_of(text: str) -> str:
    """The series name an event condition reads."""
    return series.name_of(compiler.definition_of(text=text)[1].event)


def test_an_event_property_condition_reads_its_series_days_in_the_window():
    eur = series_of('sum(event "Order Completed".revenue where currency = "EUR") > 0')
    # The series is named by its shape: the aggregate, window and filter order do not matter.
    assert eur == series_of('avg(event "Order Completed".revenue where currency = "EUR" in last 3d) < 1')
    assert eur != series_of('sum(event "Order Completed".revenue where currency = "USD") > 0')
    assert series_of('count(event "A" where x = 1 and y = 2) > 0') == series_of(
        'count(event "A" where y = 2 and x = 1) > 0'
    )
    profile = ProfileState(
        "p",
        1,
        series={
            (TODAY, eur): (2, 30.0, 10.0, 20.0),
            (TODAY - 29, eur): (1, 5.0, 5.0, 5.0),
            (TODAY - 30, eur): (1, 100.0, 100.0, 100.0),
        },
    )
    where = 'event "Order Completed".revenue where currency = "EUR"'
    assert matches(f"sum({where} in last 30d) = 35", profile)
    assert matches(f"sum({where}) = 135", profile)
    assert matches(f"avg({where} in last 30d) > 11.6", profile) and matches(f"avg({where} in last 30d) < 11.7", profile)
    assert matches(f"min({where} in last 30d) = 5", profile) and matches(f"max({where}) = 100", profile)
    assert matches(f"max({where} in last 1d) = 20", profile)
    assert (
        matches('count(event "Order Completed" where currency = "EUR" in last 30d) = 3', profile) is False
    )  # another series
    # No events in the window: a sum is 0, an average, minimum or maximum has no value.
    assert matches(f"sum({where} between now - 20d and now - 2d) = 0", profile)
    assert not matches(f"avg({where} between now - 20d and now - 2d) < 100", profile)
    assert matches(f"not min({where} between now - 20d and now - 2d) < 100", profile)


def test_a_series_day_moves_with_profile_updated_and_its_timer_is_due_at_midnight():
    text = 'sum(event "Order Completed".revenue in last 1d) > 10'
    name = series_of(text)
    profile = ProfileState("p", 1)
    update = profile_updated_pb2.ProfileUpdated(profile_id="p", version=2)
    change = update.changes.add(path=f"daily_series.2026-03-31|{name}")
    change.new_value.struct_value.update({"count": 2, "sum": 12.5, "min": 2.5, "max": 10})
    profile.apply(update)
    assert profile.series == {(TODAY, name): (2, 12.5, 2.5, 10.0)} and matches(text, profile)
    assert next_due(compiler.definition_of(text=text)[1], profile, NOW) == (TODAY + 1) * DAY
    assert not matches(text, profile, NOW + DAY)  # the day left the window
    gone = profile_updated_pb2.ProfileUpdated(profile_id="p", version=3)
    gone.changes.add(path=f"daily_series.2026-03-31|{name}")
    profile.apply(gone)
    assert profile.series == {}
    bad = profile_updated_pb2.ProfileUpdated(profile_id="p", version=4)
    bad.changes.add(path=f"daily_series.2026-03-31|{name}").new_value.struct_value.update({"count": 1})
    with pytest.raises(InvalidArgument) as caught:
        profile.apply(bad)
    assert caught.value.field == "changes.new_value" and "'sum'" in caught.value.rule


def test_a_profile_with_series_is_read_from_the_profile_message():
    name = series_of('count(event "A" where x = 1) > 0')
    profile = profile_pb2.Profile(profile_id="p", version=3)
    profile.daily_series[f"2026-03-31|{name}"].CopyFrom(profile_pb2.DailySeries(day="2026-03-31", series=name, count=4))
    assert ProfileState.of_profile(profile).series == {(TODAY, name): (4, 0.0, 0.0, 0.0)}
    assert compiler.compile_all({"s": compiler.definition_of(text='count(event "A" where x = 1) > 0')[1]})[
        "s"
    ].reads == {f"daily_series.{name}"}
    assert compiler.read_key(f"daily_series.2026-03-31|{name}") == f"daily_series.{name}"
