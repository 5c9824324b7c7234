"""Segment conditions: pure logic."""

import pytest
from google.protobuf import struct_pb2

from mosaic.platform.errors import InvalidArgument
from mosaic.segmentation.v1 import segment_pb2 as s
from segmentation_service import conditions


def trait(name, operator, value=None) -> s.Condition:
    condition = s.Condition(trait=s.TraitCondition(trait=name, operator=operator))
    if value is not None:
        condition.trait.value.CopyFrom(struct_pb2.Value(**value))
    return condition


def traits(**values) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@pytest.mark.parametrize(("condition", "values", "expected"), [
    (trait("plan", s.OPERATOR_EQUALS, {"string_value": "pro"}), {"plan": "pro"}, True),
    (trait("plan", s.OPERATOR_EQUALS, {"string_value": "pro"}), {"plan": "free"}, False),
    (trait("plan", s.OPERATOR_NOT_EQUALS, {"string_value": "pro"}), {}, False),
    (trait("plan", s.OPERATOR_EXISTS), {"plan": "free"}, True),
    (trait("plan", s.OPERATOR_EXISTS), {"plan": None}, False),
    (trait("ltv", s.OPERATOR_GREATER_THAN, {"number_value": 100}), {"ltv": 101}, True),
    (trait("ltv", s.OPERATOR_GREATER_THAN, {"number_value": 100}), {"ltv": "101"}, False),
    (trait("ltv", s.OPERATOR_LESS_THAN, {"number_value": 100}), {"ltv": 5}, True),
    (trait("email", s.OPERATOR_CONTAINS, {"string_value": "@acme"}), {"email": "a@acme.com"}, True),
])
def test_a_trait_condition_matches_as_its_operator_says(condition, values, expected):
    assert conditions.matches(condition, traits(**values)) is expected


def test_all_and_any_combine_their_children():
    pro = trait("plan", s.OPERATOR_EQUALS, {"string_value": "pro"})
    rich = trait("ltv", s.OPERATOR_GREATER_THAN, {"number_value": 100})
    both = s.Condition(all=s.ConditionList(conditions=[pro, rich]))
    either = s.Condition(any=s.ConditionList(conditions=[pro, rich]))
    assert not conditions.matches(both, traits(plan="pro", ltv=5))
    assert conditions.matches(either, traits(plan="pro", ltv=5))
    assert conditions.traits_read(both) == {"plan", "ltv"}


@pytest.mark.parametrize(("condition", "field"), [
    (s.Condition(), "segment.condition"),
    (trait("", s.OPERATOR_EXISTS), "segment.condition.trait.trait"),
    (trait("plan", s.OPERATOR_UNSPECIFIED), "segment.condition.trait.operator"),
    (trait("ltv", s.OPERATOR_GREATER_THAN, {"string_value": "a lot"}), "segment.condition.trait.value"),
    (trait("plan", s.OPERATOR_EQUALS), "segment.condition.trait.value"),
    (s.Condition(all=s.ConditionList()), "segment.condition.all.conditions"),
    (s.Condition(any=s.ConditionList(conditions=[s.Condition()])), "segment.condition.any.conditions[0]"),
])
def test_an_invalid_condition_names_the_field(condition, field):
    with pytest.raises(InvalidArgument) as caught:
        conditions.validate(condition)
    assert caught.value.field == field
