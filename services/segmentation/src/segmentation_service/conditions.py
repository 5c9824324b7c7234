"""Segment conditions: validation, evaluation against traits, and the traits they read. Pure logic."""

from __future__ import annotations

import re

from google.protobuf import struct_pb2

from mosaic.platform.errors import InvalidArgument
from mosaic.segmentation.v1 import segment_pb2

SEGMENT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
Op = segment_pb2.Operator


def validate(condition: segment_pb2.Condition, field: str = "segment.condition") -> None:
    kind = condition.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(field, "must set trait, all or any")
    if kind == "trait":
        trait = condition.trait
        if not trait.trait:
            raise InvalidArgument(f"{field}.trait.trait", "is required")
        if trait.operator == Op.OPERATOR_UNSPECIFIED:
            raise InvalidArgument(f"{field}.trait.operator", "is required")
        needs = {Op.OPERATOR_GREATER_THAN: "number_value", Op.OPERATOR_LESS_THAN: "number_value",
                 Op.OPERATOR_CONTAINS: "string_value"}.get(trait.operator)
        if needs and trait.value.WhichOneof("kind") != needs:
            raise InvalidArgument(f"{field}.trait.value", f"must be a {needs.split('_')[0]} for {Op.Name(trait.operator)}")
        if trait.operator in (Op.OPERATOR_EQUALS, Op.OPERATOR_NOT_EQUALS) and not trait.HasField("value"):
            raise InvalidArgument(f"{field}.trait.value", f"is required for {Op.Name(trait.operator)}")
        return
    children = getattr(condition, kind).conditions
    if not children:
        raise InvalidArgument(f"{field}.{kind}.conditions", "must have at least one condition")
    for index, child in enumerate(children):
        validate(child, f"{field}.{kind}.conditions[{index}]")


def matches(condition: segment_pb2.Condition, traits: struct_pb2.Struct) -> bool:
    kind = condition.WhichOneof("kind")
    if kind == "all":
        return all(matches(child, traits) for child in condition.all.conditions)
    if kind == "any":
        return any(matches(child, traits) for child in condition.any.conditions)
    spec = condition.trait
    value = traits.fields.get(spec.trait)
    if value is None or value.WhichOneof("kind") in (None, "null_value"):
        return False
    if spec.operator == Op.OPERATOR_EXISTS:
        return True
    if spec.operator == Op.OPERATOR_EQUALS:
        return value == spec.value
    if spec.operator == Op.OPERATOR_NOT_EQUALS:
        return value != spec.value
    if spec.operator == Op.OPERATOR_GREATER_THAN:
        return value.WhichOneof("kind") == "number_value" and value.number_value > spec.value.number_value
    if spec.operator == Op.OPERATOR_LESS_THAN:
        return value.WhichOneof("kind") == "number_value" and value.number_value < spec.value.number_value
    if spec.operator == Op.OPERATOR_CONTAINS:
        return value.WhichOneof("kind") == "string_value" and spec.value.string_value in value.string_value
    return False


def traits_read(condition: segment_pb2.Condition) -> set[str]:
    """The traits a condition reads: a change to any other trait cannot change membership."""
    kind = condition.WhichOneof("kind")
    if kind == "trait":
        return {condition.trait.trait}
    return set().union(*(traits_read(child) for child in getattr(condition, kind).conditions))
