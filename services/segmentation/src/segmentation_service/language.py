"""The segment language: text to the proto AST (`Expression`) and back. Pure logic.

    traits.plan = "pro" and count(event "Order Completed" in last 30d) >= 2
      and not count(event "Email Opened" in last 14d) > 0

The grammar is lark's (LALR, so an error names the line, the column and the tokens that could
have come there). `parse` and `render` round-trip: `parse(render(e)) == e` for every valid tree,
and `render(parse(text))` is the canonical form of the text.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from google.protobuf import duration_pb2, timestamp_pb2
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from mosaic.platform.errors import InvalidArgument
from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service.rfm import SCORE_NAMES, SCORES

Op = pb.Operator

GRAMMAR = r"""
?start: or_
?or_: and_ ("or" and_)*
?and_: not_ ("and" not_)*
?not_: "not" not_ -> negation
     | atom
?atom: "(" or_ ")"
     | trait
     | event
     | identity
     | segment_ref
     | consent
     | rfm

trait: path COMPARE literal            -> compare
     | path "contains" literal         -> contains
     | path "starts" "with" literal    -> starts_with
     | path "ends" "with" literal      -> ends_with
     | path "matches" STRING           -> matches
     | path "in" list_                 -> in_
     | path "not" "in" list_           -> not_in
     | path "exists"                   -> exists
     | path "is" "missing"             -> is_missing
     | path "between" literal "and" literal -> between

path: SOURCE ("." KEY)+
SOURCE: "traits" | "computed"
KEY: /[A-Za-z_$][A-Za-z0-9_$-]*/ | /`[^`]+`/

list_: "[" literal ("," literal)* "]"

event: AGGREGATE "(" "event" STRING property? filters? window? ")" COMPARE literal
property: "." KEY
filters: "where" filter ("and" filter)*
filter: KEY COMPARE literal
window: "in" "last" DURATION            -> last
      | "between" time "and" time       -> range
      | "ever"                          -> ever
AGGREGATE: "count" | "sum" | "avg" | "min" | "max"

identity: "has" KEY                     -> has
        | "is" "known"                  -> known
        | "is" "anonymous"              -> anonymous

segment_ref: "in" "segment" STRING

consent: "consent" STRING

rfm: "rfm" "." KEY COMPARE SIGNED_NUMBER                              -> rfm_compare
   | "rfm" "." KEY "between" SIGNED_NUMBER "and" SIGNED_NUMBER        -> rfm_between
   | "rfm" "." KEY "in" "[" SIGNED_NUMBER ("," SIGNED_NUMBER)* "]"     -> rfm_in
   | "rfm" "." KEY "not" "in" "[" SIGNED_NUMBER ("," SIGNED_NUMBER)* "]" -> rfm_not_in

?literal: STRING                        -> string
        | SIGNED_NUMBER                 -> number
        | "true"                        -> true
        | "false"                       -> false
        | time
?time: "now"                            -> now
     | "now" SIGN DURATION              -> relative
     | "time" STRING                    -> absolute

COMPARE: "=" | "!=" | "<=" | ">=" | "<" | ">"
SIGN: "+" | "-"
DURATION: /[0-9]+(d|h|m|s)/
STRING: /"(\\.|[^"\\])*"/

%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
"""

COMPARISONS = {
    "=": Op.OPERATOR_EQUALS,
    "!=": Op.OPERATOR_NOT_EQUALS,
    "<": Op.OPERATOR_LESS_THAN,
    "<=": Op.OPERATOR_LESS_OR_EQUAL,
    ">": Op.OPERATOR_GREATER_THAN,
    ">=": Op.OPERATOR_GREATER_OR_EQUAL,
}
SYMBOLS = {op: symbol for symbol, op in COMPARISONS.items()}
AGGREGATES = {
    "count": pb.AGGREGATE_COUNT,
    "sum": pb.AGGREGATE_SUM,
    "avg": pb.AGGREGATE_AVERAGE,
    "min": pb.AGGREGATE_MIN,
    "max": pb.AGGREGATE_MAX,
}
AGGREGATE_NAMES = {v: k for k, v in AGGREGATES.items()}
UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
SOURCES = {"traits": pb.TRAIT_SOURCE_TRAITS, "computed": pb.TRAIT_SOURCE_COMPUTED}
SOURCE_NAMES = {v: k for k, v in SOURCES.items()}
WORDS = {
    Op.OPERATOR_CONTAINS: "contains",
    Op.OPERATOR_STARTS_WITH: "starts with",
    Op.OPERATOR_ENDS_WITH: "ends with",
    Op.OPERATOR_MATCHES: "matches",
}
PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")
KEYWORDS = {
    "and",
    "or",
    "not",
    "in",
    "contains",
    "starts",
    "ends",
    "with",
    "matches",
    "exists",
    "is",
    "missing",
    "between",
    "event",
    "where",
    "last",
    "ever",
    "has",
    "known",
    "anonymous",
    "segment",
    "consent",
    "rfm",
    "true",
    "false",
    "now",
    "time",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "traits",
    "computed",
}

_parser = Lark(GRAMMAR, parser="lalr", propagate_positions=False, maybe_placeholders=False)


def _string(token: Token) -> str:
    return json.loads(token)


def _key(token: Token) -> str:
    return token[1:-1] if token.startswith("`") else str(token)


def _duration(token: Token) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(token[:-1]) * UNITS[token[-1]])


def parse_time(text: str) -> timestamp_pb2.Timestamp:
    """An ISO-8601 time (a date alone is its midnight UTC); ValueError when it is none."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(timezone.utc))
    return stamp


class _ToProto(Transformer):
    """Builds the Expression tree from lark's parse tree."""

    def or_(self, items):
        return pb.Expression(**{"or": pb.Operands(operands=items)})

    def and_(self, items):
        return pb.Expression(**{"and": pb.Operands(operands=items)})

    def negation(self, items):
        return pb.Expression(**{"not": items[0]})

    def path(self, items):
        return SOURCES[items[0]], [_key(t) for t in items[1:]]

    def _trait(self, path, operator, values):
        source, keys = path
        return pb.Expression(trait=pb.TraitPredicate(source=source, path=keys, operator=operator, values=values))

    def compare(self, items):
        return self._trait(items[0], COMPARISONS[items[1]], [items[2]])

    def contains(self, items):
        return self._trait(items[0], Op.OPERATOR_CONTAINS, [items[1]])

    def starts_with(self, items):
        return self._trait(items[0], Op.OPERATOR_STARTS_WITH, [items[1]])

    def ends_with(self, items):
        return self._trait(items[0], Op.OPERATOR_ENDS_WITH, [items[1]])

    def matches(self, items):
        pattern = _string(items[1])
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"matches: {pattern!r} is not a regular expression ({error})") from None
        return self._trait(items[0], Op.OPERATOR_MATCHES, [pb.Literal(string_value=pattern)])

    def in_(self, items):
        return self._trait(items[0], Op.OPERATOR_IN, items[1])

    def not_in(self, items):
        return self._trait(items[0], Op.OPERATOR_NOT_IN, items[1])

    def exists(self, items):
        return self._trait(items[0], Op.OPERATOR_EXISTS, [])

    def is_missing(self, items):
        return self._trait(items[0], Op.OPERATOR_IS_MISSING, [])

    def between(self, items):
        return self._trait(items[0], Op.OPERATOR_BETWEEN, [items[1], items[2]])

    def list_(self, items):
        return list(items)

    def event(self, items):
        aggregate, name, *rest = items
        predicate = pb.EventPredicate(aggregate=AGGREGATES[aggregate], event=_string(name))
        predicate.operator = COMPARISONS[rest[-2]]
        predicate.value.CopyFrom(rest[-1])
        for part in rest[:-2]:
            kind, value = part
            if kind == "property":
                predicate.property = value
            elif kind == "filters":
                predicate.filters.extend(value)
            else:
                predicate.window.CopyFrom(value)
        if not predicate.HasField("window"):
            predicate.window.ever = True
        return pb.Expression(event=predicate)

    def property(self, items):
        return "property", _key(items[0])

    def filters(self, items):
        return "filters", items

    def filter(self, items):
        return pb.PropertyFilter(property=_key(items[0]), operator=COMPARISONS[items[1]], value=items[2])

    def last(self, items):
        return "window", pb.Window(last=_duration(items[0]))

    def range(self, items):
        return "window", pb.Window(between=pb.TimeRange(**{"from": items[0], "to": items[1]}))

    def ever(self, items):
        return "window", pb.Window(ever=True)

    def has(self, items):
        return pb.Expression(identity=pb.IdentityPredicate(fact=pb.IDENTITY_FACT_HAS_TYPE, type=_key(items[0])))

    def known(self, items):
        return pb.Expression(identity=pb.IdentityPredicate(fact=pb.IDENTITY_FACT_KNOWN))

    def anonymous(self, items):
        return pb.Expression(identity=pb.IdentityPredicate(fact=pb.IDENTITY_FACT_ANONYMOUS))

    def segment_ref(self, items):
        return pb.Expression(segment=pb.SegmentReference(segment_id=_string(items[0])))

    def consent(self, items):
        return pb.Expression(consent=pb.ConsentPredicate(purpose=_string(items[0])))

    def _rfm(self, key: Token, operator: pb.Operator, numbers: list[Token]) -> pb.Expression:
        name = _key(key)
        if name not in SCORES:
            raise ValueError(
                f"line {key.line} column {key.column}: rfm.{name} is not an RFM score;"
                f" expected one of {', '.join(f'rfm.{s}' for s in SCORES)}"
            )
        values = []
        for number in numbers:
            value = float(number)
            if not value.is_integer() or not 1 <= value <= 5:
                raise ValueError(
                    f"line {number.line} column {number.column}: rfm.{name} is compared with {number!s}:"
                    " an RFM score is a whole number from 1 to 5"
                )
            values.append(int(value))
        return pb.Expression(rfm=pb.RfmPredicate(score=SCORES[name], operator=operator, values=values))

    def rfm_compare(self, items):
        return self._rfm(items[0], COMPARISONS[items[1]], [items[2]])

    def rfm_between(self, items):
        return self._rfm(items[0], Op.OPERATOR_BETWEEN, items[1:])

    def rfm_in(self, items):
        return self._rfm(items[0], Op.OPERATOR_IN, items[1:])

    def rfm_not_in(self, items):
        return self._rfm(items[0], Op.OPERATOR_NOT_IN, items[1:])

    def string(self, items):
        return pb.Literal(string_value=_string(items[0]))

    def number(self, items):
        return pb.Literal(number_value=float(items[0]))

    def true(self, items):
        return pb.Literal(bool_value=True)

    def false(self, items):
        return pb.Literal(bool_value=False)

    def now(self, items):
        return pb.Literal(relative_time=pb.RelativeTime(offset=duration_pb2.Duration()))

    def relative(self, items):
        offset = _duration(items[1])
        if items[0] == "-":
            offset.seconds = -offset.seconds
        return pb.Literal(relative_time=pb.RelativeTime(offset=offset))

    def absolute(self, items):
        text = _string(items[0])
        try:
            return pb.Literal(timestamp_value=parse_time(text))
        except ValueError:
            raise ValueError(f"time: {text!r} is not an ISO-8601 time") from None


TERMINAL_NAMES = {
    "AGGREGATE": "count, sum, avg, min or max",
    "SOURCE": "traits. or computed.",
    "COMPARE": "a comparison (=, !=, <, <=, >, >=)",
    "SIGNED_NUMBER": "a number",
    "STRING": "a string",
    "KEY": "a name",
    "DURATION": "a duration (30d, 12h, 15m, 10s)",
    "SIGN": "+ or -",
}


def _expected(error: UnexpectedInput) -> str:
    names = getattr(error, "expected", None) or getattr(error, "allowed", None) or []
    shown = set()
    for name in names:
        pattern = _parser.get_terminal(name).pattern
        shown.add(TERMINAL_NAMES.get(name) or (f"`{pattern.value}`" if pattern.type == "str" else name))
    return "; ".join(sorted(shown))


def parse(text: str, field: str = "definition") -> pb.Expression:
    """The Expression of `text`; InvalidArgument naming the line, column and what was expected."""
    try:
        return _ToProto().transform(_parser.parse(text))
    except UnexpectedEOF as error:
        lines = text.splitlines() or [""]
        raise InvalidArgument(
            field,
            f"line {len(lines)} column {len(lines[-1]) + 1}: the definition ends too "
            f"early; expected one of {_expected(error)}",
        ) from None
    except UnexpectedToken as error:
        found = "the end" if error.token.type == "$END" else repr(f"{error.token!s:.30}")
        raise InvalidArgument(
            field, f"line {error.line} column {error.column}: unexpected {found}; expected one of {_expected(error)}"
        ) from None
    except UnexpectedCharacters as error:
        assert error.pos_in_stream is not None  # always set for a character (lark's stub has it optional)
        raise InvalidArgument(
            field,
            f"line {error.line} column {error.column}: unexpected character "
            f"{text[error.pos_in_stream]!r}; expected one of {_expected(error)}",
        ) from None
    except VisitError as error:
        raise InvalidArgument(field, str(error.orig_exc)) from None


def _render_key(key: str) -> str:
    return key if PLAIN_KEY.match(key) and key not in KEYWORDS else f"`{key}`"


def _render_duration(duration: duration_pb2.Duration) -> str:
    seconds = abs(duration.seconds)
    for unit, size in UNITS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable: every whole number of seconds has a unit")


def _render_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def render_literal(literal: pb.Literal) -> str:
    kind = literal.WhichOneof("kind")
    if kind == "string_value":
        return json.dumps(literal.string_value)
    if kind == "number_value":
        return _render_number(literal.number_value)
    if kind == "bool_value":
        return "true" if literal.bool_value else "false"
    if kind == "timestamp_value":
        return f'time "{literal.timestamp_value.ToJsonString()}"'
    offset = literal.relative_time.offset
    if offset.seconds == 0:
        return "now"
    return f"now {'-' if offset.seconds < 0 else '+'} {_render_duration(offset)}"


def _render_trait(trait: pb.TraitPredicate) -> str:
    path = ".".join([SOURCE_NAMES[trait.source], *(_render_key(k) for k in trait.path)])
    values = [render_literal(v) for v in trait.values]
    op = trait.operator
    if op in SYMBOLS:
        return f"{path} {SYMBOLS[op]} {values[0]}"
    if op in WORDS:
        return f"{path} {WORDS[op]} {values[0]}"
    if op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN):
        return f"{path} {'in' if op == Op.OPERATOR_IN else 'not in'} [{', '.join(values)}]"
    if op == Op.OPERATOR_EXISTS:
        return f"{path} exists"
    if op == Op.OPERATOR_IS_MISSING:
        return f"{path} is missing"
    return f"{path} between {values[0]} and {values[1]}"


def _render_event(event: pb.EventPredicate) -> str:
    parts = [f"event {json.dumps(event.event)}"]
    if event.property:
        parts[0] += f".{_render_key(event.property)}"
    if event.filters:
        parts.append(
            "where "
            + " and ".join(
                f"{_render_key(f.property)} {SYMBOLS[f.operator]} {render_literal(f.value)}" for f in event.filters
            )
        )
    window = event.window.WhichOneof("kind")
    if window == "last":
        parts.append(f"in last {_render_duration(event.window.last)}")
    elif window == "between":
        span = event.window.between
        parts.append(f"between {render_literal(getattr(span, 'from'))} and {render_literal(span.to)}")
    return (
        f"{AGGREGATE_NAMES[event.aggregate]}({' '.join(parts)}) {SYMBOLS[event.operator]} {render_literal(event.value)}"
    )


def _render_rfm(predicate: pb.RfmPredicate) -> str:
    score, op, values = f"rfm.{SCORE_NAMES[predicate.score]}", predicate.operator, list(predicate.values)
    if op == Op.OPERATOR_BETWEEN:
        return f"{score} between {values[0]} and {values[1]}"
    if op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN):
        return f"{score} {'in' if op == Op.OPERATOR_IN else 'not in'} [{', '.join(map(str, values))}]"
    return f"{score} {SYMBOLS[op]} {values[0]}"


def render(expression: pb.Expression, _parent: str = "") -> str:
    """The canonical text of an Expression: `and` binds tighter than `or`, `not` tightest."""
    kind = expression.WhichOneof("kind")
    if kind in ("and", "or"):
        text = f" {kind} ".join(render(o, kind) for o in getattr(expression, kind).operands)
        # An operand of the same kind is parenthesised too, so the tree comes back as it was.
        return f"({text})" if _parent in (kind, "not") or (kind, _parent) == ("or", "and") else text
    if kind == "not":
        return f"not {render(getattr(expression, 'not'), 'not')}"
    if kind == "trait":
        return _render_trait(expression.trait)
    if kind == "event":
        return _render_event(expression.event)
    if kind == "identity":
        fact = expression.identity
        if fact.fact == pb.IDENTITY_FACT_HAS_TYPE:
            return f"has {_render_key(fact.type)}"
        return "is known" if fact.fact == pb.IDENTITY_FACT_KNOWN else "is anonymous"
    if kind == "consent":
        return f"consent {json.dumps(expression.consent.purpose)}"
    if kind == "rfm":
        return _render_rfm(expression.rfm)
    return f"in segment {json.dumps(expression.segment.segment_id)}"
