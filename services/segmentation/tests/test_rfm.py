"""RFM scores: quintile edges over every replica, the scores they give, their lowering into trait
conditions, and the named segments. Pure logic."""

import itertools
import math
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic.platform.config import ConfigError
from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service import compiler, language, rfm
from segmentation_service.columns import ColumnarView
from segmentation_service.config import Settings
from segmentation_service.evaluate import evaluate, next_due
from segmentation_service.rfm import RfmModel, RfmTraits
from segmentation_service.state import DAY, ProfileState

NOW = datetime(2026, 3, 31, 15, tzinfo=timezone.utc).timestamp()
TRAITS = RfmTraits()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


def customer(pid: str, days_ago: float, orders: float, value: float | None = None) -> ProfileState:
    computed: dict = {"last_order_at": iso(NOW - days_ago * DAY), "orders": float(orders)}
    if value is not None:
        computed["lifetime_value"] = float(value)
    return ProfileState(pid, 1, computed=computed)


def model_of(summaries, generation: int = 1) -> RfmModel:
    customers, recency, frequency, monetary = rfm.edges(summaries)
    return RfmModel(TRAITS, generation, NOW, customers, recency, frequency, monetary)


def test_scores_are_quintiles_of_the_customers_and_recent_is_better():
    days, orders, value = np.arange(10.0), np.arange(1.0, 11.0), np.arange(10.0) * 100
    model = model_of([rfm.summary(days, orders, value)])
    assert model.recency == (1, 3, 5, 7) and model.frequency == (2, 4, 6, 8) and model.monetary == (100, 300, 500, 700)
    assert rfm.scores(customer("a", 0.5, 10, 900), model, NOW) == {1: 5, 2: 5, 3: 5, 4: 5}
    assert rfm.scores(customer("b", 9.5, 1), model, NOW) == {1: 1, 2: 1, 3: 1, 4: 1}  # no value: 0
    assert rfm.scores(customer("c", 4.2, 5, 450), model, NOW) == {1: 3, 2: 3, 3: 3, 4: 3}
    # Who has no order, or no time of it, has no scores.
    assert rfm.scores(ProfileState("d", 1, computed={"orders": 0.0}), model, NOW) is None
    assert rfm.scores(ProfileState("e", 1, computed={"orders": 2.0, "last_order_at": "soon"}), model, NOW) is None
    assert rfm.scores(customer("f", 1, 3), RfmModel(), NOW) is None  # no edges yet


def test_ties_share_a_score():
    orders = np.array([1.0] * 6 + [2, 3, 4, 5])
    model = model_of([rfm.summary(np.zeros(10), orders, orders)])
    assert model.frequency == (1, 1, 1, 3)
    assert [rfm.score(n, model.frequency) for n in (1, 2, 3, 4, 5)] == [1, 4, 4, 5, 5]


def test_edges_merged_from_replicas_are_those_of_the_whole_population():
    generator = np.random.default_rng(7)
    days = generator.integers(0, 400, 3000).astype(float)
    orders = generator.geometric(0.4, 3000).astype(float)
    value = np.round(generator.gamma(2, 40, 3000), 2)
    whole = model_of([rfm.summary(days, orders, value)])
    parts = [slice(0, 500), slice(500, 2100), slice(2100, 3000)]  # uneven replicas
    merged = model_of([rfm.summary(days[p], orders[p], value[p]) for p in parts])
    assert (merged.customers, merged.recency, merged.frequency, merged.monetary) == (
        3000,
        whole.recency,
        whole.frequency,
        whole.monetary,
    )
    expected = tuple(float(np.quantile(days, q, method="inverted_cdf")) for q in rfm.QUANTILES)
    assert whole.recency == expected


def test_a_replica_with_more_distinct_values_than_it_sends_moves_an_edge_by_little():
    generator = np.random.default_rng(11)
    values = [generator.lognormal(4, 1, n) for n in (20_000, 9_000, 31_000)]
    assert all(len(np.unique(v)) > rfm.SUMMARY_POINTS for v in values)
    merged = rfm.percentiles(rfm.distribution(v) for v in values)
    whole = np.sort(np.concatenate(values))
    for q, edge in zip(rfm.QUANTILES, merged, strict=True):
        rank = np.searchsorted(whole, edge, side="right") / len(whole)
        assert abs(rank - q) <= 3 / rfm.SUMMARY_POINTS  # each replica off by at most 1/SUMMARY_POINTS


def test_no_customers_give_no_edges():
    assert rfm.edges([rfm.summary(np.array([]), np.array([]), np.array([]))]) == (0, (), (), ())


def _named_match(expression: pb.Expression, found: dict[int, int]) -> bool:
    kind = expression.WhichOneof("kind")
    if kind == "and":
        return all(_named_match(o, found) for o in getattr(expression, "and").operands)
    assert kind == "rfm"
    return rfm.matches(expression.rfm, found)


def test_every_scored_customer_is_in_exactly_one_named_segment():
    named = {segment_id: language.parse(text) for segment_id, _, text in rfm.NAMED}
    assert len(named) == 11
    seen = set()
    for r, f, m in itertools.product(range(1, 6), repeat=3):
        found = {1: r, 2: f, 3: m, 4: (f + m) // 2}
        [segment] = [s for s, e in named.items() if _named_match(e, found)]
        seen.add(segment)
    assert seen == set(named)  # and none is empty


@pytest.mark.parametrize(
    ("scores", "segment"),
    [
        ((5, 5, 5), "rfm_champions"),
        ((5, 1, 1), "rfm_new_customers"),
        ((4, 1, 2), "rfm_promising"),
        ((3, 3, 4), "rfm_need_attention"),
        ((1, 5, 5), "rfm_cant_lose_them"),
        ((2, 4, 3), "rfm_at_risk"),
        ((1, 1, 2), "rfm_lost"),
        ((2, 2, 2), "rfm_hibernating"),
        ((4, 5, 4), "rfm_loyal"),
    ],
)
def test_the_named_segments_follow_the_rfm_table(scores, segment):
    r, f, m = scores
    found = {1: r, 2: f, 3: m, 4: (f + m) // 2}
    assert [s for s, _, text in rfm.NAMED if _named_match(language.parse(text), found)] == [segment]


# The lowering into trait conditions against the scores themselves, on every evaluator.

edge_sets = st.lists(st.sampled_from([-5.0, 0.0, 1.0, 2.0, 3.0, 30.0, 100.0]), min_size=4, max_size=4).map(
    lambda e: tuple(sorted(e))
)
scored_models = st.builds(
    lambda r, f, m: RfmModel(TRAITS, 3, NOW, 10, r, f, m),
    edge_sets.map(lambda e: tuple(max(v, 0.0) for v in e)),
    edge_sets.map(lambda e: tuple(max(v, 1.0) for v in e)),
    edge_sets,
)
models = st.one_of(scored_models, scored_models, scored_models, st.just(RfmModel(TRAITS)))
recencies = st.sampled_from([0.0, 0.5, 1.0, 1.999, 2.0, 3.5, 31.0, -2.0]).map(lambda d: iso(NOW - d * DAY))
counts = st.sampled_from([1.0, 2.0, 3.0, 30.0, 31.0, 500.0])
amounts = st.sampled_from([-10.0, -5.0, 0.0, 1.0, 2.5, 100.0, 101.0])
customers = st.fixed_dictionaries(
    {"last_order_at": recencies, "orders": counts}, optional={"lifetime_value": amounts | st.just(True)}
)
# Mostly customers; the rest with any of the traits missing or of another type.
others = st.fixed_dictionaries(
    {},
    optional={
        "last_order_at": recencies | st.sampled_from(["not a time", 4.0]),
        "orders": counts | st.sampled_from([0.0, "many"]),
        "lifetime_value": amounts | st.just(True),
    },
)
computed = st.one_of(customers, customers, customers, others)
predicates = st.builds(
    lambda score, op, values: pb.RfmPredicate(
        score=score,
        operator=op,
        values=values[:2] if op == pb.OPERATOR_BETWEEN else values if op in (9, 10) else values[:1],
    ),
    st.sampled_from(list(pb.RfmScore.values())[1:]),
    st.sampled_from([*language.SYMBOLS, pb.OPERATOR_IN, pb.OPERATOR_NOT_IN, pb.OPERATOR_BETWEEN]),
    st.lists(st.integers(1, 5), min_size=2, max_size=3),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(computed, min_size=1, max_size=10), models, predicates)
def test_a_lowered_score_condition_matches_who_the_scores_say_on_every_evaluator(profiles, model, predicate):
    compiled = compiler.compile_all({"s": pb.Expression(rfm=predicate)}, model)["s"]
    assert compiled.rfm_generation == model.generation and compiled.reads <= {
        f"computed_traits.{t}" for t in ("last_order_at", "orders", "lifetime_value")
    }
    view = ColumnarView(4)
    expected = set()
    for index, values in enumerate(profiles):
        state = ProfileState(f"p{index}", 1, computed=values)
        view.put(state, NOW)
        if rfm.matches(predicate, rfm.scores(state, model, NOW)):
            expected.add(state.profile_id)
        assert evaluate(compiled.expression, state, NOW) == (state.profile_id in expected), language.render(
            compiled.expression
        )
    assert set(view.profile_ids(view.evaluate(compiled.expression, NOW))) == expected
    # The view's measures are those of each profile.
    days, orders, value = view.rfm_measures(TRAITS, NOW)
    measured = [rfm.measures(view.get(f"p{i}"), TRAITS, NOW) for i in range(len(profiles))]
    assert sorted(zip(days.tolist(), orders.tolist(), value.tolist(), strict=True)) == sorted(
        m for m in measured if m is not None
    )


def test_a_recency_score_falls_when_its_edge_passes_and_a_timer_comes_then():
    model = RfmModel(TRAITS, 1, NOW, 5, (1, 3, 5, 7), (1, 2, 3, 4), (10, 20, 30, 40))
    compiled = compiler.compile_all({"s": language.parse("rfm.recency = 5")}, model)["s"]
    assert compiled.timed
    state = customer("a", 0.25, 2, 15)  # last order 6 hours ago: 0 days, recency 5 until 2 days
    due = next_due(compiled.expression, state, NOW)
    assert due is not None and math.isclose(due, NOW - 0.25 * DAY + 2 * DAY)
    assert evaluate(compiled.expression, state, due - 1) and not evaluate(compiled.expression, state, due + 1)


def test_a_segment_reading_scores_through_a_reference_carries_the_generation():
    model = RfmModel(TRAITS, 4, NOW, 5, (1, 3, 5, 7), (1, 2, 3, 4), (10, 20, 30, 40))
    definitions = {"best": language.parse("rfm.fm >= 4"), "vip": language.parse('in segment "best" and has email')}
    definitions["plain"] = language.parse("has email")
    compiled = compiler.compile_all(definitions, model)
    assert compiled["vip"].rfm_generation == 4 and compiled["plain"].rfm_generation is None
    # Without edges nobody has scores, whatever the condition.
    empty = compiler.compile_all({"s": language.parse("rfm.recency <= 5")})["s"]
    assert not evaluate(empty.expression, customer("a", 1, 3, 5), NOW)


def test_the_traits_rfm_reads_are_configured_by_name_and_a_bad_one_stops_the_start():
    settings = Settings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_SEGMENTATION_RFM_MONETARY_TRAIT": "spend_365d"})
    assert settings.rfm_traits == RfmTraits(monetary="spend_365d") and settings.rfm_interval == 3600
    with pytest.raises(ConfigError, match="MOSAIC_SEGMENTATION_RFM_RECENCY_TRAIT"):
        Settings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_SEGMENTATION_RFM_RECENCY_TRAIT": "Last Order"})
    with pytest.raises(ConfigError, match="MOSAIC_SEGMENTATION_RFM_SECONDS"):
        Settings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_SEGMENTATION_RFM_SECONDS": "0"})
