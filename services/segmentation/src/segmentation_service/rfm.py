"""RFM: recency, frequency and monetary scores 1-5 by quintiles of every customer. Pure logic.

A customer is a profile whose frequency trait (computed trait `orders` by default: the profile
service's count of "Order Completed") is at least 1 and whose recency trait (`last_order_at`,
the time of the latest order) is a time. Their measures: recency, the whole days since that
time; frequency, the trait; monetary, the monetary trait (`lifetime_value`, the sum of the
orders' `revenue`; 0 when missing). The edges of each measure are its 20th, 40th, 60th and 80th
percentiles over every customer of every replica (`edges`, merging each replica's `summary`);
a score is 1 plus the number of edges the value is past, and for recency (fewer days is
better) 5 minus the number of edges the days exceed, so ties share a score.

A score condition is not evaluated by a path of its own: `lower` turns it, with the current
edges, into trait conditions (`rfm.recency >= 4` is `computed.orders >= 1 and
computed.last_order_at >= time "1970-01-01T00:00:00Z" and computed.last_order_at > now - 31d`
when the second edge is 30 days), which the plain, incremental and columnar evaluators already
agree on, whose days passing are timers like any `now - d`, and which Estimate and backfills
evaluate as they do every definition. `scores` is the direct semantics the lowering is tested
against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf import duration_pb2, timestamp_pb2

from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service.state import DAY, ProfileState, time_of

Op = pb.Operator
SCORES = {
    "recency": pb.RFM_SCORE_RECENCY,
    "frequency": pb.RFM_SCORE_FREQUENCY,
    "monetary": pb.RFM_SCORE_MONETARY,
    "fm": pb.RFM_SCORE_FREQUENCY_MONETARY,
}
SCORE_NAMES = {v: k for k, v in SCORES.items()}
SUMMARY_POINTS = 4096  # distinct values a replica sends exactly; beyond, this many quantiles
QUANTILES = (0.2, 0.4, 0.6, 0.8)
EPOCH_LITERAL = pb.Literal(timestamp_value=timestamp_pb2.Timestamp(seconds=0))

# The named RFM segments: Putler's RFM segment table (putler.com/rfm-analysis: R and F&M score
# ranges for champions ... lost, the table most RFM tools copy) made a partition of the 5x5
# grid of R and F&M, so every customer is in exactly one: where the table's ranges overlap, the
# cell goes to the segment the widely used R-by-F segment map gives it (champions only at R 5,
# loyal at R 3-4; new customers at R 5, promising at R 4; can't lose them at R 1-2 with F&M 5),
# and lost takes R 1 with F&M 1-2, hibernating R 2.
NAMED: tuple[tuple[str, str, str], ...] = (
    ("rfm_champions", "Champions", "rfm.recency = 5 and rfm.fm >= 4"),
    ("rfm_loyal", "Loyal customers", "rfm.recency between 3 and 4 and rfm.fm >= 4"),
    ("rfm_potential_loyalists", "Potential loyalists", "rfm.recency >= 4 and rfm.fm between 2 and 3"),
    ("rfm_new_customers", "New customers", "rfm.recency = 5 and rfm.fm = 1"),
    ("rfm_promising", "Promising", "rfm.recency = 4 and rfm.fm = 1"),
    ("rfm_need_attention", "Need attention", "rfm.recency = 3 and rfm.fm = 3"),
    ("rfm_about_to_sleep", "About to sleep", "rfm.recency = 3 and rfm.fm <= 2"),
    ("rfm_at_risk", "At risk", "rfm.recency <= 2 and rfm.fm between 3 and 4"),
    ("rfm_cant_lose_them", "Can't lose them", "rfm.recency <= 2 and rfm.fm = 5"),
    ("rfm_hibernating", "Hibernating", "rfm.recency = 2 and rfm.fm <= 2"),
    ("rfm_lost", "Lost", "rfm.recency = 1 and rfm.fm <= 2"),
)


@dataclass(frozen=True)
class RfmTraits:
    """The computed traits RFM reads (MOSAIC_SEGMENTATION_RFM_*_TRAIT)."""

    recency: str = "last_order_at"
    frequency: str = "orders"
    monetary: str = "lifetime_value"


DEFAULT_TRAITS = RfmTraits()


@dataclass(frozen=True)
class RfmModel:
    """The edges scores are given by (no edges: nobody has scores), and the traits they read."""

    traits: RfmTraits = DEFAULT_TRAITS
    generation: int = 0
    computed_at: float = 0.0
    customers: int = 0
    recency: tuple[float, ...] = ()
    frequency: tuple[float, ...] = ()
    monetary: tuple[float, ...] = ()

    @property
    def scored(self) -> bool:
        return len(self.recency) == 4

    @classmethod
    def of_proto(cls, model: pb.RfmModel, traits: RfmTraits) -> RfmModel:
        return cls(
            traits,
            model.generation,
            model.computed_at.seconds + model.computed_at.nanos / 1e9,
            model.customers,
            tuple(model.recency_edges),
            tuple(model.frequency_edges),
            tuple(model.monetary_edges),
        )

    def to_proto(self) -> pb.RfmModel:
        model = pb.RfmModel(
            generation=self.generation,
            customers=self.customers,
            recency_edges=self.recency,
            frequency_edges=self.frequency,
            monetary_edges=self.monetary,
        )
        model.computed_at.FromNanoseconds(int(self.computed_at * 1e9))
        return model


# The measures of one profile, and the scores they give (the semantics).


def measures(state: ProfileState, traits: RfmTraits, now: float) -> tuple[int, float, float] | None:
    """(days since the last order, orders, value) of a customer; None for anyone else."""
    orders = state.computed.get(traits.frequency)
    last = state.computed.get(traits.recency)
    moment = time_of(last) if isinstance(last, str) else None
    if not isinstance(orders, float) or orders < 1 or moment is None or moment < 0:
        return None
    value = state.computed.get(traits.monetary)
    return math.floor((now - moment) / DAY), orders, value if isinstance(value, float) else 0.0


def score(value: float, edges: Sequence[float], lower_is_better: bool = False) -> int:
    if lower_is_better:
        return 5 - sum(value > edge for edge in edges)
    return 1 + sum(value > edge for edge in edges)


def scores(state: ProfileState, model: RfmModel, now: float) -> dict[int, int] | None:
    """The person's four scores by RfmScore; None without scores (not a customer, no edges)."""
    found = measures(state, model.traits, now)
    if found is None or not model.scored:
        return None
    days, orders, value = found
    f, m = score(orders, model.frequency), score(value, model.monetary)
    return {
        pb.RFM_SCORE_RECENCY: score(days, model.recency, lower_is_better=True),
        pb.RFM_SCORE_FREQUENCY: f,
        pb.RFM_SCORE_MONETARY: m,
        pb.RFM_SCORE_FREQUENCY_MONETARY: (f + m) // 2,
    }


def matches(predicate: pb.RfmPredicate, found: dict[int, int] | None) -> bool:
    """Whether scores (from `scores`) match the predicate: what `lower` must agree with."""
    if found is None:
        return False
    mine, values = found[predicate.score], list(predicate.values)
    op = predicate.operator
    if op == Op.OPERATOR_IN:
        return mine in values
    if op == Op.OPERATOR_NOT_IN:
        return mine not in values
    if op == Op.OPERATOR_BETWEEN:
        return values[0] <= mine <= values[1]
    return {
        Op.OPERATOR_EQUALS: mine == values[0],
        Op.OPERATOR_NOT_EQUALS: mine != values[0],
        Op.OPERATOR_LESS_THAN: mine < values[0],
        Op.OPERATOR_LESS_OR_EQUAL: mine <= values[0],
        Op.OPERATOR_GREATER_THAN: mine > values[0],
        Op.OPERATOR_GREATER_OR_EQUAL: mine >= values[0],
    }[op]


# Lowering: a score condition as trait conditions under the current edges. Trees are built with
# True/False folded away, so only a whole condition can be constant (then FALSE's tree).


Node = pb.Expression | bool


def _trait(name: str, op: pb.Operator, literal: pb.Literal) -> pb.Expression:
    return pb.Expression(
        trait=pb.TraitPredicate(source=pb.TRAIT_SOURCE_COMPUTED, path=[name], operator=op, values=[literal])
    )


def _number(value: float) -> pb.Literal:
    return pb.Literal(number_value=value)


def _all(parts: Iterable[Node]) -> Node:
    return _join(parts, "and", absorbing=False)


def _any(parts: Iterable[Node]) -> Node:
    return _join(parts, "or", absorbing=True)


def _join(parts: Iterable[Node], op: str, absorbing: bool) -> Node:
    """`parts` joined by `op`, constants folded: the absorbing one (False for and, True for or)
    decides at once, the other drops out, and nothing left is the other."""
    kept: list[pb.Expression] = []
    for part in parts:
        if part is absorbing:
            return absorbing
        if part is not (not absorbing):
            kept.append(part)  # type: ignore[arg-type]
    if not kept:
        return not absorbing
    return kept[0] if len(kept) == 1 else pb.Expression(**{op: pb.Operands(operands=kept)})  # type: ignore[arg-type]


def _not(part: Node) -> Node:
    if isinstance(part, bool):
        return not part
    return pb.Expression(**{"not": part})  # type: ignore[arg-type]


def _at_least(score_kind: int, k: int, model: RfmModel) -> Node:
    """`score >= k` for a customer, as trait conditions."""
    if k <= 1:
        return True
    if k > 5:
        return False
    traits = model.traits
    if score_kind == pb.RFM_SCORE_RECENCY:
        # days <= e  <=>  floor((now - t) / DAY) <= e  <=>  t > now - (e + 1) days
        edge = model.recency[5 - k]
        offset = duration_pb2.Duration(seconds=-int(edge + 1) * DAY)
        return _trait(
            traits.recency, Op.OPERATOR_GREATER_THAN, pb.Literal(relative_time=pb.RelativeTime(offset=offset))
        )
    if score_kind == pb.RFM_SCORE_FREQUENCY:
        return _trait(traits.frequency, Op.OPERATOR_GREATER_THAN, _number(model.frequency[k - 2]))
    if score_kind == pb.RFM_SCORE_MONETARY:
        edge = model.monetary[k - 2]
        if edge < 0:  # a missing value counts as 0, past a negative edge
            return _not(_trait(traits.monetary, Op.OPERATOR_LESS_OR_EQUAL, _number(edge)))
        return _trait(traits.monetary, Op.OPERATOR_GREATER_THAN, _number(edge))
    # (F + M) // 2 >= k  <=>  F + M >= 2k  <=>  for some a: F >= a and M >= 2k - a
    return _any(
        _all((_at_least(pb.RFM_SCORE_FREQUENCY, a, model), _at_least(pb.RFM_SCORE_MONETARY, 2 * k - a, model)))
        for a in range(max(1, 2 * k - 5), min(5, 2 * k - 1) + 1)
    )


def _equal(score_kind: int, k: int, model: RfmModel) -> Node:
    return _all((_at_least(score_kind, k, model), _not(_at_least(score_kind, k + 1, model))))


def _test(predicate: pb.RfmPredicate, model: RfmModel) -> Node:
    kind, values, op = predicate.score, list(predicate.values), predicate.operator
    if op == Op.OPERATOR_IN:
        return _any(_equal(kind, v, model) for v in values)
    if op == Op.OPERATOR_NOT_IN:
        return _not(_any(_equal(kind, v, model) for v in values))
    if op == Op.OPERATOR_BETWEEN:
        return _all((_at_least(kind, values[0], model), _not(_at_least(kind, values[1] + 1, model))))
    v = values[0]
    return {
        Op.OPERATOR_EQUALS: lambda: _equal(kind, v, model),
        Op.OPERATOR_NOT_EQUALS: lambda: _not(_equal(kind, v, model)),
        Op.OPERATOR_LESS_THAN: lambda: _not(_at_least(kind, v, model)),
        Op.OPERATOR_LESS_OR_EQUAL: lambda: _not(_at_least(kind, v + 1, model)),
        Op.OPERATOR_GREATER_THAN: lambda: _at_least(kind, v + 1, model),
        Op.OPERATOR_GREATER_OR_EQUAL: lambda: _at_least(kind, v, model),
    }[op]()


def customer(traits: RfmTraits) -> pb.Expression:
    """Who has scores: at least one order, and the last one's time."""
    gate = _all(
        (
            _trait(traits.frequency, Op.OPERATOR_GREATER_OR_EQUAL, _number(1)),
            _trait(traits.recency, Op.OPERATOR_GREATER_OR_EQUAL, EPOCH_LITERAL),
        )
    )
    assert isinstance(gate, pb.Expression)
    return gate


def never(traits: RfmTraits) -> pb.Expression:
    """A condition no profile matches, reading what RFM reads (so its dependencies stay)."""
    operands = [
        pb.Expression(trait=pb.TraitPredicate(source=pb.TRAIT_SOURCE_COMPUTED, path=[traits.frequency], operator=op))
        for op in (Op.OPERATOR_EXISTS, Op.OPERATOR_IS_MISSING)
    ]
    return pb.Expression(**{"and": pb.Operands(operands=operands)})  # type: ignore[arg-type]


def lower(predicate: pb.RfmPredicate, model: RfmModel) -> pb.Expression:
    """The predicate as trait conditions under the model's edges."""
    if not model.scored:
        return never(model.traits)
    found = _all((customer(model.traits), _test(predicate, model)))
    return found if isinstance(found, pb.Expression) else never(model.traits)


# Edges over every replica: each summarises its customers, the recomputing replica merges.


def distribution(values: np.ndarray) -> pb.RfmDistribution:
    """Distinct values with their counts; past SUMMARY_POINTS of them, that many quantiles of
    equal weight (so a merged percentile is off by at most 1/SUMMARY_POINTS of the replica's
    customers in rank)."""
    if len(values) == 0:
        return pb.RfmDistribution()
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) <= SUMMARY_POINTS:
        return pb.RfmDistribution(values=distinct.tolist(), weights=counts.astype(float).tolist())
    ranks = (np.arange(SUMMARY_POINTS) + 0.5) / SUMMARY_POINTS
    points = np.quantile(values, ranks, method="inverted_cdf")
    weight = len(values) / SUMMARY_POINTS
    return pb.RfmDistribution(values=points.tolist(), weights=[weight] * SUMMARY_POINTS)


def summary(days: np.ndarray, orders: np.ndarray, value: np.ndarray) -> pb.RfmSummary:
    return pb.RfmSummary(
        customers=len(days), recency=distribution(days), frequency=distribution(orders), monetary=distribution(value)
    )


def percentiles(parts: Iterable[pb.RfmDistribution]) -> tuple[float, ...]:
    """The 20th, 40th, 60th and 80th percentiles of merged distributions: for each, the smallest
    value at least that share of the customers is at or below (empty without customers)."""
    parts = list(parts)
    values = np.array([v for p in parts for v in p.values])
    weights = np.array([w for p in parts for w in p.weights]) if len(values) else np.array([])
    if not len(values) or weights.sum() <= 0:
        return ()
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[order])
    total = cumulative[-1]
    # A tolerance: weights of quantile points are fractions, their sums not exact.
    found = [values[min(np.searchsorted(cumulative, q * total - 1e-9 * total), len(values) - 1)] for q in QUANTILES]
    return tuple(float(v) for v in found)


def edges(summaries: Sequence[pb.RfmSummary]) -> tuple[int, tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(customers, recency, frequency and monetary edges) over every replica's summary."""
    return (
        sum(s.customers for s in summaries),
        percentiles(s.recency for s in summaries),
        percentiles(s.frequency for s in summaries),
        percentiles(s.monetary for s in summaries),
    )
