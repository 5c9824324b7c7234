"""Transforms and tracking plans: pure logic."""

from typing import Any

import pytest
from google.protobuf import json_format

from ingestion_service import transforms
from ingestion_service.governance import Governor, Verdict, check_plan
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import source_pb2
from mosaic.platform.errors import InvalidArgument

A = source_pb2.PlanAction
T = event_pb2.EventType


def source(plan: dict | None = None, steps: list[dict] | None = None) -> source_pb2.Source:
    definition: dict[str, Any] = {"sourceId": "web", "transforms": steps or []}
    if plan is not None:
        definition["trackingPlan"] = plan
    return json_format.ParseDict(definition, source_pb2.Source())


def track(name="Bought", **properties) -> event_pb2.Event:
    event = event_pb2.Event(type=T.EVENT_TYPE_TRACK, user_id="u", event=name)
    event.properties.update(properties)
    return event


PRICE_PLAN = {
    "events": {
        "Bought": {
            "type": "object",
            "required": ["price"],
            "properties": {"price": {"type": "number", "minimum": 0}, "sku": {"type": "string", "maxLength": 5}},
        }
    },
    "identifyTraits": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}},
    "unplanned": "PLAN_ACTION_BLOCK",
    "invalid": "PLAN_ACTION_QUARANTINE",
}


def test_a_planned_valid_event_goes_on():
    assert Governor(source(PRICE_PLAN)).decide(track(price=12, sku="A1")) is None


@pytest.mark.parametrize(
    ("event", "verdict"),
    [
        (track("Refunded", price=1), Verdict(A.PLAN_ACTION_BLOCK, "event", "'Refunded' is not in the tracking plan")),
        (track(price=-1), Verdict(A.PLAN_ACTION_QUARANTINE, "properties.price", "-1.0 is less than the minimum of 0")),
        (track(sku="A1"), Verdict(A.PLAN_ACTION_QUARANTINE, "properties", "'price' is a required property")),
        (track(price=1, sku="TOOLONG"), Verdict(A.PLAN_ACTION_QUARANTINE, "properties.sku", "'TOOLONG' is too long")),
    ],
)
def test_an_unplanned_or_invalid_event_gets_the_plans_action(event, verdict):
    assert Governor(source(PRICE_PLAN)).decide(event) == verdict


def test_identify_traits_follow_their_own_schema():
    event = event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u")
    event.traits.update({"email": "not an address"})
    verdict = Governor(source(PRICE_PLAN)).decide(event)
    assert (verdict.field, verdict.reason) == ("traits.email", "'not an address' is not a 'email'")
    assert Governor(source(PRICE_PLAN)).decide(event_pb2.Event(type=T.EVENT_TYPE_PAGE, user_id="u")) is None


def test_allow_lets_unplanned_and_invalid_events_through():
    allowing = {**PRICE_PLAN, "unplanned": "PLAN_ACTION_ALLOW", "invalid": "PLAN_ACTION_ALLOW"}
    assert Governor(source(allowing)).decide(track("Refunded")) is None
    assert Governor(source(allowing)).decide(track(price="free")) is None


def test_types_are_coerced_where_the_plan_says_so():
    plan = {
        "events": {
            "Bought": {
                "type": "object",
                "properties": {
                    "price": {"type": "number"},
                    "qty": {"type": "integer"},
                    "gift": {"type": "boolean"},
                    "sku": {"type": "string"},
                    "note": {"type": ["null", "string"]},
                },
            }
        },
        "invalid": "PLAN_ACTION_BLOCK",
        "coerceTypes": True,
    }
    event = track(price="12.50", qty="3", gift="TRUE", sku=1234, note=False)
    assert Governor(source(plan)).decide(event) is None
    assert json_format.MessageToDict(event.properties) == {
        "price": 12.5,
        "qty": 3.0,
        "gift": True,
        "sku": "1234",
        "note": "false",
    }
    not_a_number = track(price="twelve")
    verdict = Governor(source(plan)).decide(not_a_number)
    assert (verdict.field, verdict.reason) == ("properties.price", "'twelve' is not of type 'number'")


def test_transforms_rename_drop_and_normalise_before_the_plan():
    steps = [
        {"event": "purchase", "renameEvent": {"toName": "Bought"}},
        {"renameField": {"fromPath": "properties.cost", "toPath": "properties.price"}},
        {"dropField": {"path": "properties.card.number"}},
        {"dropField": {"path": "context.ip"}},
        {"normaliseEmail": {"path": "properties.email"}},
        {"normalisePhone": {"path": "properties.phone", "defaultRegion": "GB"}},
        {"normalisePhone": {"path": "context.traits.phone", "defaultRegion": "US"}},
    ]
    event = track(
        "purchase", cost=5, card={"number": "4111", "brand": "visa"}, email="  Ada@Example.COM ", phone="020 7946 0018"
    )
    event.context.update({"ip": "1.2.3.4", "traits": {"phone": "(415) 555-0132"}})
    assert Governor(source(PRICE_PLAN, steps)).decide(event) is None
    assert event.event == "Bought"
    assert json_format.MessageToDict(event.properties) == {
        "price": 5.0,
        "card": {"brand": "visa"},
        "email": "ada@example.com",
        "phone": "+442079460018",
    }
    assert json_format.MessageToDict(event.context) == {"traits": {"phone": "+14155550132"}}


def test_a_transform_that_cannot_work_makes_the_event_invalid():
    steps = [{"normalisePhone": {"path": "properties.phone", "defaultRegion": "US"}}]
    event = track(price=1, phone="call me maybe")
    verdict = Governor(source(PRICE_PLAN, steps)).decide(event)
    assert verdict.action == A.PLAN_ACTION_QUARANTINE and verdict.field == "properties.phone"
    assert verdict.reason.startswith("is not a phone number")
    assert Governor(source(None, steps)).decide(track(phone="call me maybe")) is None  # no plan: allowed


def test_transforms_on_other_events_or_absent_fields_do_nothing():
    steps = [
        {"event": "Other", "dropField": {"path": "properties.price"}},
        {"normaliseEmail": {"path": "traits.email"}},
    ]
    event = track(price=3)
    Governor(source(None, steps)).decide(event)
    assert event.properties["price"] == 3


def test_a_plan_with_a_broken_schema_is_refused_naming_it():
    plan = json_format.ParseDict(
        {"events": {"Bought": {"type": "object", "minProperties": -1}}}, source_pb2.TrackingPlan()
    )
    with pytest.raises(InvalidArgument) as caught:
        check_plan(plan)
    assert caught.value.field == "tracking_plan.events['Bought']"
    assert caught.value.rule.startswith("is not valid JSON Schema")


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        ("+1 415-555-0132", "", "+14155550132"),
        ("07700 900123", "GB", "+447700900123"),
        (14155550132.0, "US", "+14155550132"),
    ],
)
def test_phone_numbers_become_e164(value, region, expected):
    assert transforms.normalise_phone(value, region) == expected
