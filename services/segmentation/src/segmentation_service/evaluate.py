"""The plain evaluator: one compiled definition against one profile's state. Pure logic.

`predicate` turns a definition into a function of (state, now, policy) once, so the per-profile
path reads no protobuf; `evaluate` is the same for one call. These are the language's semantics; the columnar evaluator (columns.py) must agree with them
on every profile (test_agreement.py draws random profiles and definitions to check it).

- A missing trait (or null, or a path through a non-object) matches only `is missing`; every
  other operator, `!=` and `not in` included, needs the trait set.
- A value compares with a literal of its own type only: strings with strings (`<` is code-point
  order), numbers with numbers, booleans with booleans; a time literal compares with a string
  trait holding an ISO-8601 time. A value of another type does not match (and is "different"
  for `!=` and `not in`).
- Event counts are daily: `in last 30d` is today and the 29 days before (UTC); `between a and
  b` the days of a to b; `ever` every day kept. Segmentation keeps the last COUNTER_DAYS days,
  as the profile service does. A count reads the daily counters; a property or a filter reads
  an event series (series.py), whose days the profile service keeps on the same retention.
- `sum` of no events is 0 (as `count`); `avg`, `min` and `max` of no events have no value and
  match nothing (`not` of them does). Only events whose property is a number count.
- `consent "p"` is the person's latest decision on p (a grant only until its expiry), else the
  default of their jurisdiction (else the deployment's) for p, as the consent service decides;
  a purpose the deployment no longer has is not granted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from mosaic.platform.consent import Policy
from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service import series
from segmentation_service.state import DAY, ProfileState, time_of

# Plain attributes: an enum wrapper's attribute lookup is slow on the per-profile path.
Op = SimpleNamespace(**dict(pb.Operator.items()))
COUNTER_DAYS = 90
DEFAULT_POLICY = Policy()
Predicate = Callable[[ProfileState, float, Policy], bool]
FIXED = ("string_value", "number_value", "bool_value", "timestamp_value")


@lru_cache(maxsize=1024)
def pattern(text: str) -> re.Pattern:
    return re.compile(text)


def literal_value(literal: pb.Literal, now: float) -> tuple[str, Any]:
    """(kind, value): kind is `string`, `number`, `bool` or `time` (epoch seconds)."""
    kind = literal.WhichOneof("kind")
    if kind == "string_value":
        return "string", literal.string_value
    if kind == "number_value":
        return "number", literal.number_value
    if kind == "bool_value":
        return "bool", literal.bool_value
    if kind == "timestamp_value":
        return "time", literal.timestamp_value.seconds + literal.timestamp_value.nanos / 1e9
    return "time", now + literal.relative_time.offset.seconds


def comparable(value: Any, kind: str) -> Any:
    """The value as the literal's kind compares it; None when it is of another type."""
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "number":
        return value if isinstance(value, float) else None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    return time_of(value) if isinstance(value, str) else None


def lookup(state: ProfileState, trait: pb.TraitPredicate) -> Any:
    return _lookup(state, trait.source == pb.TRAIT_SOURCE_TRAITS, tuple(trait.path))


def _lookup(state: ProfileState, own: bool, path: tuple[str, ...]) -> Any:
    value: Any = state.traits if own else state.computed
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _compare(op: int, left: Any, right: Any) -> bool:
    if op == Op.OPERATOR_EQUALS:
        return left == right
    if op == Op.OPERATOR_LESS_THAN:
        return left < right
    if op == Op.OPERATOR_LESS_OR_EQUAL:
        return left <= right
    if op == Op.OPERATOR_GREATER_THAN:
        return left > right
    if op == Op.OPERATOR_GREATER_OR_EQUAL:
        return left >= right
    if op == Op.OPERATOR_NOT_EQUALS:
        return left != right
    if op == Op.OPERATOR_CONTAINS:
        return right in left
    if op == Op.OPERATOR_STARTS_WITH:
        return left.startswith(right)
    if op == Op.OPERATOR_ENDS_WITH:
        return left.endswith(right)
    return pattern(right).search(left) is not None  # OPERATOR_MATCHES


def _trait_test(trait: pb.TraitPredicate) -> Callable[[Any, float], bool]:
    """`(value, now) -> matches` for a trait predicate, its literals decoded once (a relative
    time is `now` plus its offset at each call)."""
    op = trait.operator
    # As literal_value reads them: a literal of none of the fixed kinds is relative to now.
    offsets = [None if v.WhichOneof("kind") in FIXED else v.relative_time.offset.seconds for v in trait.values]
    fixed = [literal_value(v, 0.0) for v in trait.values]
    relative = any(o is not None for o in offsets)

    def literals(now: float) -> list[tuple[str, Any]]:
        if not relative:
            return fixed
        return [(k, v if o is None else now + o) for (k, v), o in zip(fixed, offsets, strict=True)]

    if op in (Op.OPERATOR_EXISTS, Op.OPERATOR_IS_MISSING):
        exists = op == Op.OPERATOR_EXISTS
        return lambda value, now: (value is not None) == exists
    if op in (Op.OPERATOR_NOT_EQUALS, Op.OPERATOR_NOT_IN, Op.OPERATOR_IN):
        wanted = op == Op.OPERATOR_IN

        def among(value: Any, now: float) -> bool:
            if value is None:
                return False
            equal = any(comparable(value, k) is not None and comparable(value, k) == v for k, v in literals(now))
            return equal == wanted

        return among
    if op == Op.OPERATOR_BETWEEN:

        def between(value: Any, now: float) -> bool:
            if value is None:
                return False
            (kind, low), (_, high) = literals(now)
            mine = comparable(value, kind)
            return mine is not None and low <= mine <= high

        return between
    if not fixed:  # compiler.check refuses it; match nothing rather than fail the catalog
        return lambda value, now: False
    (kind, literal), offset = fixed[0], offsets[0]

    def compared(value: Any, now: float) -> bool:
        if value is None:
            return False
        mine = comparable(value, kind)
        return mine is not None and _compare(op, mine, literal if offset is None else now + offset)

    return compared


def window_days(window: pb.Window, now: float) -> tuple[int, int]:
    """The first and last epoch day an event condition counts (both included)."""
    today = math.floor(now / DAY)
    oldest = today - COUNTER_DAYS + 1
    kind = window.WhichOneof("kind")
    if kind == "last":
        return max(oldest, today - math.ceil(window.last.seconds / DAY) + 1), today
    if kind == "between":
        first = literal_value(getattr(window.between, "from"), now)[1]
        last = literal_value(window.between.to, now)[1]
        return max(oldest, math.floor(first / DAY)), min(today, math.floor(last / DAY))
    return oldest, today


def _count(state: ProfileState, name: str, first: int, last: int) -> float:
    return float(sum(n for (day, event), n in state.counters.items() if event == name and first <= day <= last))


def _series_value(state: ProfileState, name: str, aggregate: int, first: int, last: int) -> float | None:
    """The aggregate of a series' days from first to last (None: no value, see the docstring)."""
    n, total, low, high = 0, 0.0, math.inf, -math.inf
    for (day, of), (count, summed, smallest, largest) in state.series.items():
        if of == name and first <= day <= last:
            n, total = n + count, total + summed
            low, high = min(low, smallest), max(high, largest)
    if aggregate in series.TOTALS:
        return float(n) if aggregate == pb.AGGREGATE_COUNT else total
    if n == 0:
        return None
    if aggregate == pb.AGGREGATE_AVERAGE:
        return total / n
    return low if aggregate == pb.AGGREGATE_MIN else high


def consented(state: ProfileState, purpose: str, now: float, policy: Policy) -> bool:
    if purpose in state.consent:
        return state.consent[purpose] > now
    configured = policy.purposes.get(purpose)
    return configured is not None and configured.default(state.jurisdiction or policy.jurisdiction)


def evaluate(expression: pb.Expression, state: ProfileState, now: float, policy: Policy = DEFAULT_POLICY) -> bool:
    """Whether the profile matches the (compiled, references inlined) expression at `now`,
    under the deployment's consent `policy` (its purposes' defaults)."""
    return predicate(expression)(state, now, policy)


def predicate(expression: pb.Expression) -> Predicate:
    """The expression as a function `(state, now, policy) -> matches`: the tree and its literals
    read once (a segment's, when the catalog loads it), not per profile."""
    kind = expression.WhichOneof("kind")
    if kind in ("and", "or"):
        parts = [predicate(o) for o in getattr(expression, kind).operands]
        if kind == "and":

            def every(state: ProfileState, now: float, policy: Policy) -> bool:
                for part in parts:
                    if not part(state, now, policy):
                        return False
                return True

            return every

        def some(state: ProfileState, now: float, policy: Policy) -> bool:
            for part in parts:
                if part(state, now, policy):
                    return True
            return False

        return some
    if kind == "not":
        inner = predicate(getattr(expression, "not"))
        return lambda state, now, policy: not inner(state, now, policy)
    if kind == "consent":
        purpose = expression.consent.purpose
        return lambda state, now, policy: consented(state, purpose, now, policy)
    if kind == "trait":
        own, path, test = (
            expression.trait.source == pb.TRAIT_SOURCE_TRAITS,
            tuple(expression.trait.path),
            _trait_test(expression.trait),
        )
        return lambda state, now, policy: test(_lookup(state, own, path), now)
    if kind == "event":
        return _event_test(expression.event)
    fact = expression.identity
    if fact.fact == pb.IDENTITY_FACT_HAS_TYPE:
        wanted = fact.type
        return lambda state, now, policy: state.identities.get(wanted, 0) > 0
    known = fact.fact == pb.IDENTITY_FACT_KNOWN
    return lambda state, now, policy: (state.identities.get("user_id", 0) > 0) == known


def _event_test(event: pb.EventPredicate) -> Predicate:
    op, threshold, window = event.operator, event.value.number_value, event.window
    measure: Callable[[ProfileState, int, int], float | None]
    if series.needs_series(event):
        name, aggregate = series.name_of(event), event.aggregate
        measure = lambda state, first, last: _series_value(state, name, aggregate, first, last)  # noqa: E731
    else:
        name = event.event
        measure = lambda state, first, last: _count(state, name, first, last)  # noqa: E731
    if window.WhichOneof("kind") == "last":
        days = math.ceil(window.last.seconds / DAY)

        def last(state: ProfileState, now: float, policy: Policy) -> bool:
            today = math.floor(now / DAY)
            value = measure(state, max(today - COUNTER_DAYS + 1, today - days + 1), today)
            return value is not None and _compare(op, value, threshold)

        return last

    def windowed(state: ProfileState, now: float, policy: Policy) -> bool:
        value = measure(state, *window_days(window, now))
        return value is not None and _compare(op, value, threshold)

    return windowed


Due = Callable[[ProfileState, float], float | None]


def next_due(expression: pb.Expression, state: ProfileState, now: float) -> float | None:
    """The earliest time after `now` the result may change with no new event; None if never."""
    return due_function(expression)(state, now)


def due_function(expression: pb.Expression) -> Due:
    """`next_due` as a function `(state, now) -> due`, the tree read once (a segment's, when
    the catalog loads it), so a profile's timer costs a few lookups, not a walk of protobuf.

    Conservative: an event condition over counters (or series) the profile has may change at the next
    UTC midnight; a trait compared with `now ± d` when `now` passes the trait's time; a
    consent when the person's grant expires."""
    events: set[str] = set()
    series_read: set[str] = set()
    traits: list[tuple[bool, tuple[str, ...], list[int]]] = []  # (own, path, relative offsets)
    purposes: set[str] = set()

    def walk(node: pb.Expression) -> None:
        kind = node.WhichOneof("kind")
        if kind in ("and", "or"):
            for operand in getattr(node, kind).operands:
                walk(operand)
        elif kind == "not":
            walk(getattr(node, "not"))
        elif kind == "event":
            if series.needs_series(node.event):
                series_read.add(series.name_of(node.event))
            else:
                events.add(node.event.event)
        elif kind == "trait":
            relative = [v.relative_time.offset.seconds for v in node.trait.values if v.HasField("relative_time")]
            if relative:
                traits.append((node.trait.source == pb.TRAIT_SOURCE_TRAITS, tuple(node.trait.path), relative))
        elif kind == "consent":
            purposes.add(node.consent.purpose)

    walk(expression)

    def due(state: ProfileState, now: float) -> float | None:
        times: list[float] = []
        if (events and any(name in events for _, name in state.counters)) or (
            series_read and any(name in series_read for _, name in state.series)
        ):
            times.append((math.floor(now / DAY) + 1) * DAY)
        for own, path, relative in traits:
            value = _lookup(state, own, path)
            moment = time_of(value) if isinstance(value, str) else None
            if moment is not None:
                times.extend(moment - offset for offset in relative if moment - offset > now)
        for purpose in purposes:
            until = state.consent.get(purpose, 0.0)
            if now < until < math.inf:
                times.append(until)
        return min(times) if times else None

    return due
