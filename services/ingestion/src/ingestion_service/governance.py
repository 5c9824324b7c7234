"""Governance: a source's transforms, then its tracking plan (JSON Schema), decide each event.

Pure logic. `Governor(source).decide(event)` transforms the event in place and returns None
when it may go on, or a `Verdict` saying whether it is blocked or quarantined and why. An
event is *unplanned* when it is a track event whose name the plan does not list, and
*invalid* when it fails its schema or a transform; the plan's action for each decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jsonschema
from google.protobuf import json_format, struct_pb2

from ingestion_service import transforms
from ingestion_service.transforms import TransformError
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import source_pb2
from mosaic.platform.errors import InvalidArgument

A = source_pb2.PlanAction


@dataclass(frozen=True)
class Verdict:
    """What the plan decided about an event that may not simply go on."""

    action: int  # PLAN_ACTION_BLOCK or PLAN_ACTION_QUARANTINE
    field: str
    reason: str


def check_plan(plan: source_pb2.TrackingPlan, prefix: str = "tracking_plan") -> None:
    """Refuse a plan whose schemas are not valid JSON Schema, naming the schema and the rule."""
    schemas = {f"{prefix}.events[{name!r}]": schema for name, schema in plan.events.items()}
    if plan.HasField("identify_traits"):
        schemas[f"{prefix}.identify_traits"] = plan.identify_traits
    for where, schema in schemas.items():
        if not schema.fields:
            continue  # an empty schema allows anything; it still plans the event name
        document = _integral(json_format.MessageToDict(schema))
        try:
            jsonschema.validators.validator_for(document).check_schema(document)
        except jsonschema.SchemaError as error:
            raise InvalidArgument(where, f"is not valid JSON Schema: {error.message}") from None


def _validator(schema: struct_pb2.Struct) -> jsonschema.protocols.Validator:
    document = _integral(json_format.MessageToDict(schema))
    cls = jsonschema.validators.validator_for(document)
    return cls(document, format_checker=cls.FORMAT_CHECKER)


def _integral(value: Any) -> Any:
    """Struct keeps every number as a double: give a schema back its integers (maxLength: 5)."""
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Governor:
    """The compiled transforms and plan of one version of a source."""

    def __init__(self, source: source_pb2.Source) -> None:
        plan = source.tracking_plan
        self.transforms = list(source.transforms)
        self.has_plan = source.HasField("tracking_plan")
        self.unplanned = plan.unplanned or A.PLAN_ACTION_ALLOW
        self.invalid = plan.invalid or A.PLAN_ACTION_ALLOW
        self.coerce = plan.coerce_types
        self.events = {name: _validator(schema) for name, schema in plan.events.items()}
        self.traits = _validator(plan.identify_traits) if plan.HasField("identify_traits") else None

    @property
    def active(self) -> bool:
        return bool(self.transforms) or self.has_plan

    def decide(self, event: event_pb2.Event) -> Verdict | None:
        try:
            transforms.apply(self.transforms, event)
        except TransformError as error:
            if self.invalid != A.PLAN_ACTION_ALLOW:
                return Verdict(self.invalid, error.field, error.reason)
        if not self.has_plan:
            return None
        if event.type == event_pb2.EVENT_TYPE_TRACK:
            validator = self.events.get(event.event)
            if validator is None:
                if self.unplanned == A.PLAN_ACTION_ALLOW:
                    return None
                return Verdict(self.unplanned, "event", f"{event.event!r} is not in the tracking plan")
            return self._validate(validator, event.properties, "properties")
        if event.type == event_pb2.EVENT_TYPE_IDENTIFY and self.traits is not None:
            return self._validate(self.traits, event.traits, "traits")
        return None

    def _validate(self, validator, struct: struct_pb2.Struct, root: str) -> Verdict | None:
        if self.coerce:
            coerce(validator.schema, struct)
        if self.invalid == A.PLAN_ACTION_ALLOW:
            return None  # nothing would change: skip the work
        error = jsonschema.exceptions.best_match(validator.iter_errors(json_format.MessageToDict(struct)))
        if error is None:
            return None
        field = ".".join([root, *(str(part) for part in error.absolute_path)])
        return Verdict(self.invalid, field, error.message)


def coerce(schema: dict[str, Any], struct: struct_pb2.Struct) -> None:
    """Convert top-level values to the type the schema declares for them, where one reads as it."""
    declared = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(declared, dict):
        return
    for name, spec in declared.items():
        if name not in struct or not isinstance(spec, dict) or "type" not in spec:
            continue
        wanted = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        value = struct[name]
        if any(_is(value, kind) for kind in wanted):
            continue
        for kind in wanted:
            converted = _convert(value, kind)
            if converted is not None:
                struct[name] = converted
                break


def _is(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, float)
    if kind == "integer":
        return isinstance(value, float) and value.is_integer()
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return isinstance(value, (struct_pb2.Struct, struct_pb2.ListValue))


def _convert(value: Any, kind: str) -> Any:
    """`value` as `kind`, or None when it does not read as one."""
    if kind in ("number", "integer") and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        if not math.isfinite(number) or (kind == "integer" and not number.is_integer()):
            return None
        return number
    if kind == "boolean":
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, float) and value in (0.0, 1.0):
            return value == 1.0
        return None
    if kind == "string" and isinstance(value, (float, bool)):
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(int(value)) if value.is_integer() else repr(value)
    return None
