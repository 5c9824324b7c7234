"""Checking a definition and compiling it for the evaluators. Pure logic.

A definition comes as text, as an Expression or as the legacy trait Condition; `definition_of`
turns any of them into the (text, Expression) pair a segment is stored with. `compile_all`
checks every rule the grammar cannot (types, regexes, windows, references), inlines referenced
segments (so every evaluator sees one self-contained tree, and a cycle is refused), lowers RFM
score conditions into trait conditions under the current edges (rfm.py), and lists what each
definition reads: the profile.updated changes that can change its membership.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf import struct_pb2

from mosaic.platform.consent import NAME as PURPOSE
from mosaic.platform.errors import InvalidArgument
from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service import language, rfm, series

Op = pb.Operator
SEGMENT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ORDERED = {Op.OPERATOR_LESS_THAN, Op.OPERATOR_LESS_OR_EQUAL, Op.OPERATOR_GREATER_THAN, Op.OPERATOR_GREATER_OR_EQUAL}
STRINGY = {Op.OPERATOR_CONTAINS, Op.OPERATOR_STARTS_WITH, Op.OPERATOR_ENDS_WITH, Op.OPERATOR_MATCHES}
ARITY = {Op.OPERATOR_EXISTS: 0, Op.OPERATOR_IS_MISSING: 0, Op.OPERATOR_BETWEEN: 2}
# Counters are daily and profile keeps MOSAIC_PROFILE_COUNTER_DAYS (90) of them.
MAX_WINDOW_DAYS = 90

# Dependency keys: a change of `traits.<name>`, `computed_traits.<name>`, any identity, the
# counters of one event, one event series, one purpose's consent, or the person's jurisdiction
# (which decides the default of every purpose they did not decide).
IDENTITIES = "identities"
JURISDICTION = "jurisdiction"


@dataclass(frozen=True)
class Compiled:
    """A definition ready to evaluate: references inlined, with what it reads."""

    segment_id: str
    expression: pb.Expression
    reads: frozenset[str]
    timed: bool  # depends on the clock (relative times or event windows)
    refers_to: frozenset[str]
    rfm_generation: int | None = None  # the RFM edges lowered into it (None: it reads no score)


def definition_of(
    segment: pb.Segment | None = None,
    *,
    text: str = "",
    expression: pb.Expression | None = None,
    field: str = "segment",
) -> tuple[str, pb.Expression]:
    """The canonical text and the tree of whichever form the caller set (exactly one); `field`
    prefixes the names in errors ("" for top-level request fields)."""
    prefix = f"{field}." if field else ""
    if segment is not None:
        text = segment.definition
        expression = segment.expression if segment.HasField("expression") else None
        condition = segment.condition if segment.HasField("condition") else None
    else:
        condition = None
    given = [name for name, v in (("definition", text), ("expression", expression), ("condition", condition)) if v]
    if len(given) != 1:
        raise InvalidArgument(
            f"{prefix}definition",
            "set exactly one of definition, expression and condition" + (f" (got {', '.join(given)})" if given else ""),
        )
    if text:
        expression = language.parse(text, f"{prefix}definition")
    elif condition is not None:
        expression = from_condition(condition, f"{prefix}condition")
    assert expression is not None  # exactly one of the three was given
    check(expression, f"{prefix}{'expression' if given[0] == 'expression' else 'definition'}")
    return language.render(expression), expression


def tied(segment: pb.Segment) -> pb.Expression:
    """The expression a segment is evaluated by: its definition, and its purpose's consent
    first when it is tied to one (so a reference to it is tied too)."""
    if not segment.purpose:
        return segment.expression
    gate = pb.Expression(consent=pb.ConsentPredicate(purpose=segment.purpose))
    # `and` is a Python keyword: the field is set by name, which protoc's stub cannot type.
    return pb.Expression(**{"and": pb.Operands(operands=[gate, segment.expression])})  # type: ignore[arg-type]


def consent_purposes(compiled: Compiled) -> list[str]:
    """The purposes a compiled definition asks consent for."""
    return sorted(key.partition(".")[2] for key in compiled.reads if key.startswith("consent."))


def from_condition(condition: pb.Condition, field: str) -> pb.Expression:
    """The legacy trait Condition as an Expression (its traits are top-level trait names)."""
    kind = condition.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(field, "must set trait, all or any")
    if kind in ("all", "any"):
        children = getattr(condition, kind).conditions
        if not children:
            raise InvalidArgument(f"{field}.{kind}.conditions", "must have at least one condition")
        operands = [from_condition(c, f"{field}.{kind}.conditions[{i}]") for i, c in enumerate(children)]
        if len(operands) == 1:
            return operands[0]
        return pb.Expression(**{"and" if kind == "all" else "or": pb.Operands(operands=operands)})  # type: ignore[arg-type]  # the stub cannot name fields and/or/not (Python keywords)
    trait = condition.trait
    if not trait.trait:
        raise InvalidArgument(f"{field}.trait.trait", "is required")
    if trait.operator == Op.OPERATOR_UNSPECIFIED:
        raise InvalidArgument(f"{field}.trait.operator", "is required")
    values = []
    if ARITY.get(trait.operator, 1):
        if not trait.HasField("value"):
            raise InvalidArgument(f"{field}.trait.value", f"is required for {Op.Name(trait.operator)}")
        values = [_literal_of(trait.value, f"{field}.trait.value")]
    predicate = pb.TraitPredicate(
        source=pb.TRAIT_SOURCE_TRAITS, path=[trait.trait], operator=trait.operator, values=values
    )
    expression = pb.Expression(trait=predicate)
    check(expression, f"{field}.trait")
    return expression


def _literal_of(value: struct_pb2.Value, field: str) -> pb.Literal:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return pb.Literal(string_value=value.string_value)
    if kind == "number_value":
        return pb.Literal(number_value=value.number_value)
    if kind == "bool_value":
        return pb.Literal(bool_value=value.bool_value)
    raise InvalidArgument(field, "must be a string, a number or a boolean")


def _kind(literal: pb.Literal) -> str:
    kind = literal.WhichOneof("kind")
    return "time" if kind in ("timestamp_value", "relative_time") else (kind or "")


def check(expression: pb.Expression, field: str) -> None:
    """Every rule the grammar cannot check; InvalidArgument naming the node and the rule."""
    kind = expression.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(field, "must set and, or, not, trait, event, identity, segment, consent or rfm")
    if kind in ("and", "or"):
        operands = getattr(expression, kind).operands
        if len(operands) < 2:
            raise InvalidArgument(f"{field}.{kind}.operands", "must have at least two operands")
        for index, operand in enumerate(operands):
            check(operand, f"{field}.{kind}.operands[{index}]")
    elif kind == "not":
        check(getattr(expression, "not"), f"{field}.not")
    elif kind == "trait":
        _check_trait(expression.trait, f"{field}.trait")
    elif kind == "event":
        _check_event(expression.event, f"{field}.event")
    elif kind == "identity":
        fact = expression.identity
        if fact.fact == pb.IDENTITY_FACT_UNSPECIFIED:
            raise InvalidArgument(f"{field}.identity.fact", "is required")
        if (fact.fact == pb.IDENTITY_FACT_HAS_TYPE) != bool(fact.type):
            raise InvalidArgument(f"{field}.identity.type", "is required for IDENTITY_FACT_HAS_TYPE only")
        _check_key(fact.type, f"{field}.identity.type", empty=True)
    elif kind == "consent":
        if not PURPOSE.match(expression.consent.purpose):
            raise InvalidArgument(f"{field}.consent.purpose", "must be a purpose name (lower-case letters, digits, _)")
    elif kind == "rfm":
        _check_rfm(expression.rfm, f"{field}.rfm")
    elif not SEGMENT_ID.match(expression.segment.segment_id):
        raise InvalidArgument(f"{field}.segment.segment_id", "must be 1-64 lower-case letters, digits, - or _")


def _check_key(key: str, field: str, empty: bool = False) -> None:
    if (not key and not empty) or "`" in key:
        raise InvalidArgument(field, "must be a non-empty name without backticks")


def _check_literal(literal: pb.Literal, field: str) -> None:
    kind = literal.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(field, "must set a value")
    if kind == "number_value" and not math.isfinite(literal.number_value):
        raise InvalidArgument(field, "must be a finite number")
    if kind == "relative_time" and literal.relative_time.offset.nanos:
        raise InvalidArgument(field, "a relative time is whole seconds")


def _check_trait(trait: pb.TraitPredicate, field: str) -> None:
    if trait.source == pb.TRAIT_SOURCE_UNSPECIFIED:
        raise InvalidArgument(f"{field}.source", "is required")
    if not trait.path:
        raise InvalidArgument(f"{field}.path", "must name a trait")
    for index, key in enumerate(trait.path):
        _check_key(key, f"{field}.path[{index}]")
    op = trait.operator
    if op == Op.OPERATOR_UNSPECIFIED:
        raise InvalidArgument(f"{field}.operator", "is required")
    arity = ARITY.get(op, 1)
    if op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN):
        if not trait.values:
            raise InvalidArgument(f"{field}.values", f"needs at least one value for {Op.Name(op)}")
    elif len(trait.values) != arity:
        raise InvalidArgument(f"{field}.values", f"needs {arity} value(s) for {Op.Name(op)}")
    for index, literal in enumerate(trait.values):
        _check_literal(literal, f"{field}.values[{index}]")
        if op in STRINGY and _kind(literal) != "string_value":
            raise InvalidArgument(f"{field}.values[{index}]", f"must be a string for {Op.Name(op)}")
        if (op in ORDERED or op == Op.OPERATOR_BETWEEN) and _kind(literal) == "bool_value":
            raise InvalidArgument(f"{field}.values[{index}]", f"a boolean has no order ({Op.Name(op)})")
    if op == Op.OPERATOR_BETWEEN and _kind(trait.values[0]) != _kind(trait.values[1]):
        raise InvalidArgument(f"{field}.values", "both ends of between must be of one type")
    if op == Op.OPERATOR_MATCHES:
        try:
            re.compile(trait.values[0].string_value)
        except re.error as error:
            raise InvalidArgument(f"{field}.values[0]", f"is not a regular expression ({error})") from None


def _check_event(event: pb.EventPredicate, field: str) -> None:
    if event.aggregate == pb.AGGREGATE_UNSPECIFIED:
        raise InvalidArgument(f"{field}.aggregate", "is required")
    if not event.event:
        raise InvalidArgument(f"{field}.event", "must name an event")
    series.check(event, field)
    if event.operator not in language.SYMBOLS:
        raise InvalidArgument(f"{field}.operator", "must be one of =, !=, <, <=, >, >=")
    _check_literal(event.value, f"{field}.value")
    if _kind(event.value) != "number_value":
        raise InvalidArgument(f"{field}.value", "must be a number")
    window = event.window.WhichOneof("kind")
    if window is None:
        raise InvalidArgument(f"{field}.window", "must set last, between or ever")
    if window == "last":
        seconds = event.window.last.seconds
        if seconds <= 0 or event.window.last.nanos or seconds > MAX_WINDOW_DAYS * 86400:
            raise InvalidArgument(f"{field}.window.last", f"must be from 1s to {MAX_WINDOW_DAYS}d (the counters kept)")
    elif window == "between":
        for end in ("from", "to"):
            literal = getattr(event.window.between, end)
            _check_literal(literal, f"{field}.window.between.{end}")
            if _kind(literal) != "time":
                raise InvalidArgument(f"{field}.window.between.{end}", "must be a time")
    elif not event.window.ever:
        raise InvalidArgument(f"{field}.window.ever", "must be true when set")


def _check_rfm(predicate: pb.RfmPredicate, field: str) -> None:
    if predicate.score not in rfm.SCORE_NAMES:
        raise InvalidArgument(f"{field}.score", f"must be one of {', '.join(f'rfm.{s}' for s in rfm.SCORES)}")
    op = predicate.operator
    if op not in language.SYMBOLS and op not in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN, Op.OPERATOR_BETWEEN):
        raise InvalidArgument(f"{field}.operator", "must be one of =, !=, <, <=, >, >=, in, not in, between")
    wanted = {Op.OPERATOR_BETWEEN: 2}.get(op, 1)
    if (op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN) and not predicate.values) or (
        op not in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN) and len(predicate.values) != wanted
    ):
        raise InvalidArgument(f"{field}.values", f"needs {wanted if wanted == 2 else 'one or more'} for {Op.Name(op)}")
    for index, value in enumerate(predicate.values):
        if not 1 <= value <= 5:
            raise InvalidArgument(f"{field}.values[{index}]", "an RFM score is a whole number from 1 to 5")


def compile_all(definitions: Mapping[str, pb.Expression], model: rfm.RfmModel | None = None) -> dict[str, Compiled]:
    """Compile every definition (RFM conditions under `model`'s edges, none: nobody has
    scores); InvalidArgument naming the segment of a cycle or a missing one."""
    model = model or rfm.RfmModel()
    done: dict[str, Compiled] = {}

    def visit(segment_id: str, path: tuple[str, ...]) -> Compiled:
        if segment_id in path:
            cycle = " -> ".join((*path[path.index(segment_id) :], segment_id))
            raise InvalidArgument("segment.definition", f"segments may not refer to each other in a cycle ({cycle})")
        if segment_id not in done:
            if segment_id not in definitions:
                raise InvalidArgument("segment.definition", f"refers to segment {segment_id!r}, which does not exist")
            done[segment_id] = _compile(
                segment_id, definitions[segment_id], lambda ref: visit(ref, (*path, segment_id)), model
            )
        return done[segment_id]

    for segment_id in sorted(definitions):
        visit(segment_id, ())
    return done


def _compile(segment_id: str, expression: pb.Expression, resolve, model: rfm.RfmModel) -> Compiled:
    reads: set[str] = set()
    refers: set[str] = set()
    timed = False
    scored = False

    def walk(node: pb.Expression) -> pb.Expression:
        nonlocal timed, scored
        kind = node.WhichOneof("kind")
        if kind == "rfm":
            scored = True
            return walk(rfm.lower(node.rfm, model))
        if kind in ("and", "or"):
            return pb.Expression(**{kind: pb.Operands(operands=[walk(o) for o in getattr(node, kind).operands])})  # type: ignore[arg-type]  # the stub cannot name fields and/or/not (Python keywords)
        if kind == "not":
            return pb.Expression(**{"not": walk(getattr(node, "not"))})  # type: ignore[arg-type]  # the stub cannot name fields and/or/not (Python keywords)
        if kind == "segment":
            other = resolve(node.segment.segment_id)
            scored = scored or other.rfm_generation is not None
            reads.update(other.reads)
            refers.update({node.segment.segment_id, *other.refers_to})
            timed = timed or other.timed
            return other.expression
        if kind == "trait":
            prefix = "traits" if node.trait.source == pb.TRAIT_SOURCE_TRAITS else "computed_traits"
            reads.add(f"{prefix}.{node.trait.path[0]}")
            timed = timed or any(v.HasField("relative_time") for v in node.trait.values)
        elif kind == "event":
            if series.needs_series(node.event):
                reads.add(f"daily_series.{series.name_of(node.event)}")
            else:
                reads.add(f"daily_counters.{node.event.event}")
            timed = True
        elif kind == "consent":
            reads.update({f"consent.{node.consent.purpose}", JURISDICTION})
            timed = True  # a grant may expire
        else:
            reads.add(IDENTITIES)
        return node

    inlined = walk(expression)
    generation = model.generation if scored else None
    return Compiled(segment_id, inlined, frozenset(reads), timed, frozenset(refers), generation)


def read_key(path: str) -> str | None:
    """The dependency key a profile.updated change path touches (None: no segment reads it)."""
    field, _, key = path.partition(".")
    if field in ("traits", "computed_traits", "consent", JURISDICTION):
        return path
    if field == "identities":
        return IDENTITIES
    if field in ("daily_counters", "daily_series"):
        return f"{field}.{key.partition('|')[2]}"
    return None
