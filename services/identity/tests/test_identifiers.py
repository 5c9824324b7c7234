"""Identifiers from events and the rules that govern them: pure logic, no I/O."""

import pytest

from identity_service.identifiers import extract
from identity_service.rules import Rules, with_defaults
from mosaic.events.v1 import event_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform.errors import InvalidArgument


def identify(**fields) -> event_pb2.Event:
    traits = fields.pop("traits", {})
    context = fields.pop("context", {})
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, **fields)
    event.traits.update(traits)
    event.context.update(context)
    return event


def pairs(identifiers):
    return [(i.type, i.value) for i in identifiers]


def test_identifiers_are_normalised_and_in_priority_order():
    event = identify(
        anonymous_id="a-1",
        user_id="u-1",
        traits={"email": "  Ada@Example.COM ", "phone": "+44 20 7946 0958"},
        context={"device": {"id": "d-1"}},
    )
    usable, rejected = extract(event, Rules())
    assert pairs(usable) == [
        ("user_id", "u-1"),
        ("email", "ada@example.com"),
        ("phone", "+442079460958"),
        ("device_id", "d-1"),
        ("anonymous_id", "a-1"),
    ]
    assert rejected == []


def test_a_national_phone_number_takes_the_configured_region():
    usable, _ = extract(identify(user_id="u", traits={"phone": "030 1234567"}), Rules(), phone_region="DE")
    assert ("phone", "+49301234567") in pairs(usable)


def test_an_unparsable_phone_is_set_aside_with_the_reason():
    _, rejected = extract(identify(user_id="u", traits={"phone": "call me"}), Rules())
    assert [(r.identifier.type, r.reason) for r in rejected] == [("phone", "not a valid phone")]


def test_external_ids_and_configured_trait_paths_are_identifiers():
    rules = Rules.from_proto(
        identity_pb2.IdentityRules(
            trait_identifiers=[identity_pb2.TraitIdentifier(path="crm.contact_id", type="crm_contact")]
        )
    )
    event = identify(
        user_id="u",
        traits={"crm": {"contact_id": 991}},
        context={
            "externalIds": [
                {"id": "cus_1", "type": "stripe_customer_id", "collection": "users"},
                {"id": "acc_9", "type": "account_id", "collection": "accounts"},
            ]
        },
    )
    usable, _ = extract(event, rules)
    assert set(pairs(usable)) >= {
        ("stripe_customer_id", "cus_1"),
        ("accounts:account_id", "acc_9"),
        ("crm_contact", "991"),
    }


@pytest.mark.parametrize(
    "junk", ["null", "NULL", "undefined", "anonymous", "0", "00000000-0000-0000-0000-000000000000", "-1"]
)
def test_junk_values_are_blocked_by_default(junk):
    usable, rejected = extract(identify(user_id=junk, anonymous_id="a-1"), Rules())
    assert pairs(usable) == [("anonymous_id", "a-1")]
    assert rejected[0].reason.startswith("blocked value")


def test_configured_patterns_block_per_type_and_everywhere():
    rules = Rules.from_proto(
        identity_pb2.IdentityRules(
            rules=[identity_pb2.IdentifierRule(type="email", blocked_patterns=[r".*@example\.com"])],
            blocked_patterns=["test-.*"],
        )
    )
    usable, rejected = extract(identify(user_id="test-1", anonymous_id="a", traits={"email": "x@example.com"}), rules)
    assert pairs(usable) == [("anonymous_id", "a")]
    assert len(rejected) == 2


def test_rules_fill_in_the_defaults():
    rules = Rules()
    assert (rules.limit("user_id"), rules.limit("email"), rules.limit("anonymous_id")) == (1, 5, 5)
    assert (rules.max_merges, rules.max_mappings) == (100, 1000)
    shown = with_defaults(identity_pb2.IdentityRules())
    assert [r.type for r in shown.rules] == ["user_id", "email", "phone", "device_id", "anonymous_id"]


def test_listed_types_take_priority_and_limits_from_the_rules():
    rules = Rules.from_proto(
        identity_pb2.IdentityRules(
            rules=[
                identity_pb2.IdentifierRule(type="email", limit=1),
                identity_pb2.IdentifierRule(type="anonymous_id", limit=50),
            ]
        )
    )
    assert rules.priority[:2] == ("email", "anonymous_id")
    assert rules.limit("anonymous_id") == 50 and rules.limit("email") == 1
    assert rules.rank("email") < rules.rank("user_id")


@pytest.mark.parametrize(
    "rules, field",
    [
        (identity_pb2.IdentityRules(blocked_patterns=["("]), "rules.blocked_patterns[0]"),
        (
            identity_pb2.IdentityRules(rules=[identity_pb2.IdentifierRule(type="email", limit=-1)]),
            "rules.rules[0].limit",
        ),
        (
            identity_pb2.IdentityRules(
                rules=[identity_pb2.IdentifierRule(type="a"), identity_pb2.IdentifierRule(type="a")]
            ),
            "rules.rules[1].type",
        ),
    ],
)
def test_bad_rules_name_the_field(rules, field):
    with pytest.raises(InvalidArgument) as caught:
        Rules.from_proto(rules)
    assert caught.value.field == field
