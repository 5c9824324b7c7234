"""Agreement, proved: the columnar, the incremental and the plain evaluation of random
definitions (RFM score conditions among them, lowered under fixed edges) over random profiles
always give the same members. Pure logic."""

import dataclasses
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic.events.v1 import profile_updated_pb2
from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service import compiler, language, series
from segmentation_service.columns import ColumnarView
from segmentation_service.evaluate import COUNTER_DAYS, evaluate
from segmentation_service.rfm import RfmModel, RfmTraits
from segmentation_service.state import DAY, EPOCH, ProfileState

NOW = datetime(2026, 3, 31, 15, tzinfo=timezone.utc).timestamp()
TODAY = int(NOW // DAY)
KEYS = ["plan", "seen"]
EVENTS = ["Order Completed", "Email Opened"]
# Few values, so definitions and profiles meet often (edges like `<` against `<=` included).
STRINGS = ["pro", "p", "", "2026-03-01T00:00:00Z", "2026-03-30"]

values = st.one_of(st.sampled_from(STRINGS), st.sampled_from([1.0, 2.5]), st.booleans())
nested = st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values, max_size=2), st.just([1.0, "x"]))
traits = st.dictionaries(st.sampled_from(KEYS), st.one_of(values, values, nested), max_size=3)
counters = st.dictionaries(
    st.tuples(st.integers(TODAY - 100, TODAY + 3), st.sampled_from(EVENTS)), st.integers(1, 5), max_size=6
)
identities = st.dictionaries(st.sampled_from(["email", "user_id", "phone"]), st.integers(1, 2), max_size=2)
# Event series, of a few shapes so that conditions and profiles meet: a property's, with and
# without a filter, and a filtered count. Values are multiples of 0.25, so sums are exact in
# any order.
EUR = pb.PropertyFilter(property="currency", operator=pb.OPERATOR_EQUALS, value=pb.Literal(string_value="EUR"))
SHAPES = [(e, p, f) for e in EVENTS for p, f in (("revenue", []), ("revenue", [EUR]), ("", [EUR]))]
SERIES = [series.name_of(pb.EventPredicate(event=e, property=p, filters=f)) for e, p, f in SHAPES]
amounts = st.sampled_from([-1.0, 0.5, 1.0, 2.5, 4.0])


partials = st.lists(amounts, min_size=1, max_size=3).map(lambda v: (len(v), sum(v), min(v), max(v)))


series_days = st.dictionaries(
    st.tuples(st.integers(TODAY - 100, TODAY + 3), st.sampled_from(SERIES)), partials, max_size=5
)
PURPOSES = ["marketing", "analytics", "advertising"]
# Until when each decided purpose is granted: refused, for good, expired, expiring later.
consents = st.dictionaries(st.sampled_from(PURPOSES), st.sampled_from([0.0, math.inf, NOW - 100, NOW + 100]))
jurisdictions = st.sampled_from([0, 1, 2])
states = st.builds(
    lambda t, c, n, i, g, j, d: (t, c, n, i, g, j, d),
    traits,
    traits,
    counters,
    identities,
    consents,
    jurisdictions,
    series_days,
)

literal_strings = st.sampled_from(STRINGS).map(lambda s: pb.Literal(string_value=s))
literal_numbers = st.sampled_from([1.0, 2.5]).map(lambda n: pb.Literal(number_value=n))
literal_times = st.one_of(
    # 2026-03-01T00:00:00Z is NOW - 30d - 15h.
    st.sampled_from([-30 * 86400 - 15 * 3600, -30 * 86400, -86400, 0]).map(
        lambda d: pb.Literal(relative_time=pb.RelativeTime(offset=duration_pb2.Duration(seconds=d)))
    ),
    st.sampled_from(["2026-03-01T00:00:00Z", "2026-01-01T00:00:00Z"]).map(
        lambda t: pb.Literal(
            timestamp_value=timestamp_pb2.Timestamp(
                seconds=int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp())
            )
        )
    ),
)
scalars = st.one_of(
    literal_strings, literal_numbers, st.booleans().map(lambda b: pb.Literal(bool_value=b)), literal_times
)
ordered = st.one_of(literal_strings, literal_numbers, literal_times)


@st.composite
def trait_predicates(draw):
    # Comparisons drawn more often: their edges are where evaluators part.
    op = draw(
        st.sampled_from(
            list(pb.Operator.values())[1:]
            + sorted(compiler.ORDERED) * 3
            + [pb.OPERATOR_EQUALS, pb.OPERATOR_NOT_EQUALS, pb.OPERATOR_BETWEEN]
        )
    )
    if op in (pb.OPERATOR_EXISTS, pb.OPERATOR_IS_MISSING):
        values_ = []
    elif op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
        values_ = draw(st.lists(scalars, min_size=1, max_size=3))
    elif op == pb.OPERATOR_MATCHES:
        values_ = [pb.Literal(string_value=draw(st.sampled_from(["^p", "a", "^$", "[0-9]{4}"])))]
    elif op in compiler.STRINGY:
        values_ = [draw(literal_strings)]
    elif op == pb.OPERATOR_BETWEEN:
        pair = draw(
            st.sampled_from(
                [(literal_strings, literal_strings), (literal_numbers, literal_numbers), (literal_times, literal_times)]
            )
        )
        values_ = [draw(pair[0]), draw(pair[1])]
    elif op in compiler.ORDERED:
        values_ = [draw(ordered)]
    else:
        values_ = [draw(scalars)]
    path = draw(st.sampled_from([[k] for k in KEYS] * 3 + [[a, b] for a in KEYS for b in KEYS[:1]]))
    source = draw(st.sampled_from([pb.TRAIT_SOURCE_TRAITS] * 3 + [pb.TRAIT_SOURCE_COMPUTED]))
    return pb.Expression(trait=pb.TraitPredicate(source=source, path=path, operator=op, values=values_))


@st.composite
def event_predicates(draw, shapes=tuple([(e, "", []) for e in EVENTS] * 2 + SHAPES)):
    event, property_, filters = draw(st.sampled_from(shapes))
    aggregate = pb.AGGREGATE_COUNT
    if property_:
        aggregate = draw(st.sampled_from([pb.AGGREGATE_SUM, pb.AGGREGATE_AVERAGE, pb.AGGREGATE_MIN, pb.AGGREGATE_MAX]))
    predicate = pb.EventPredicate(
        aggregate=aggregate,
        event=event,
        property=property_,
        filters=filters,
        operator=draw(st.sampled_from(list(language.SYMBOLS))),
        value=pb.Literal(number_value=draw(st.sampled_from([0, 1, 2, 2.5, 4, 6]))),
    )
    window = draw(st.sampled_from(["last", "between", "ever"]))
    if window == "last":
        predicate.window.last.seconds = draw(st.sampled_from([3600, 86400, 7 * 86400, 30 * 86400, 90 * 86400]))
    elif window == "between":
        predicate.window.between.CopyFrom(pb.TimeRange(**{"from": draw(literal_times), "to": draw(literal_times)}))
    else:
        predicate.window.ever = True
    return pb.Expression(event=predicate)


facts = st.one_of(
    st.sampled_from([pb.IDENTITY_FACT_KNOWN, pb.IDENTITY_FACT_ANONYMOUS]).map(
        lambda f: pb.Expression(identity=pb.IdentityPredicate(fact=f))
    ),
    st.sampled_from(["email", "phone"]).map(
        lambda t: pb.Expression(identity=pb.IdentityPredicate(fact=pb.IDENTITY_FACT_HAS_TYPE, type=t))
    ),
)
consent_predicates = st.sampled_from([*PURPOSES, "retired_purpose"]).map(
    lambda p: pb.Expression(consent=pb.ConsentPredicate(purpose=p))
)
# RFM scores read computed traits drawn like the others: `seen` holds the times (30 and 1 days
# ago), `plan` the numbers; the edges split them so every score occurs.
MODEL = RfmModel(RfmTraits("seen", "plan", "plan"), 2, NOW, 10, (0, 1, 30, 30), (1, 1, 2, 2.5), (1, 2, 2, 2.5))
rfm_predicates = st.builds(
    lambda score, op, values: pb.Expression(
        rfm=pb.RfmPredicate(
            score=score,
            operator=op,
            values=values[:2] if op == pb.OPERATOR_BETWEEN else values if op in (9, 10) else values[:1],
        )
    ),
    st.sampled_from(list(pb.RfmScore.values())[1:]),
    st.sampled_from([*language.SYMBOLS, pb.OPERATOR_IN, pb.OPERATOR_NOT_IN, pb.OPERATOR_BETWEEN]),
    st.lists(st.integers(1, 5), min_size=2, max_size=3),
)
definitions = st.recursive(
    st.one_of(trait_predicates(), event_predicates(), facts, consent_predicates, rfm_predicates),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda o: pb.Expression(**{"and": pb.Operands(operands=o)})),  # type: ignore[arg-type]  # the stub cannot name fields and/or/not (Python keywords)
        st.lists(inner, min_size=2, max_size=3).map(lambda o: pb.Expression(**{"or": pb.Operands(operands=o)})),  # type: ignore[arg-type]  # the stub cannot name fields and/or/not (Python keywords)
        inner.map(lambda e: pb.Expression(**{"not": e})),
    ),
    max_leaves=4,
)


def value_of(value) -> struct_pb2.Value:
    wrapped = struct_pb2.Value()
    if isinstance(value, dict):
        wrapped.struct_value.SetInParent()  # an empty object is still an object
        wrapped.struct_value.update(value)
    elif isinstance(value, list):
        wrapped.list_value.SetInParent()
        wrapped.list_value.extend(value)
    elif isinstance(value, bool):
        wrapped.bool_value = value
    elif isinstance(value, float):
        wrapped.number_value = value
    else:
        wrapped.string_value = value
    return wrapped


def changes(profile_id: str, version: int, old: ProfileState, new: ProfileState) -> profile_updated_pb2.ProfileUpdated:
    """What profile.updated says of the step from `old` to `new` (the profile service's diff)."""
    update = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=version)
    for prefix, before, after in (("traits", old.traits, new.traits), ("computed_traits", old.computed, new.computed)):
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key) or type(before.get(key)) is not type(after.get(key)):
                change = update.changes.add(path=f"{prefix}.{key}")
                if key in after:
                    change.new_value.CopyFrom(value_of(after[key]))
                if key in before:
                    change.old_value.CopyFrom(value_of(before[key]))
    for kind in sorted(set(old.identities) | set(new.identities)):
        had, has = old.identities.get(kind, 0), new.identities.get(kind, 0)
        for index in range(max(had, has)):
            if (index < had) != (index < has):
                change = update.changes.add(path=f"identities.{kind}:{index}")
                target = change.new_value if index < has else change.old_value
                target.string_value = str(index)
    for day, event in sorted(set(old.counters) | set(new.counters)):
        if old.counters.get((day, event)) != new.counters.get((day, event)):
            change = update.changes.add(path=f"daily_counters.{(EPOCH + timedelta(days=day)).isoformat()}|{event}")
            if (day, event) in new.counters:
                change.new_value.number_value = new.counters[(day, event)]
    for day, name in sorted(set(old.series) | set(new.series)):
        if old.series.get((day, name)) != new.series.get((day, name)):
            change = update.changes.add(path=f"daily_series.{(EPOCH + timedelta(days=day)).isoformat()}|{name}")
            if (day, name) in new.series:
                count, summed, low, high = new.series[(day, name)]
                change.new_value.struct_value.update({"count": count, "sum": summed, "min": low, "max": high})
    for purpose in sorted(set(old.consent) | set(new.consent)):
        if old.consent.get(purpose) != new.consent.get(purpose):
            change = update.changes.add(path=f"consent.{purpose}")
            if purpose in new.consent:
                until = new.consent[purpose]
                decision: dict[str, Any] = {"granted": until > 0}
                if 0 < until < math.inf:
                    decision["expires_at"] = datetime.fromtimestamp(until, timezone.utc).isoformat()
                change.new_value.struct_value.update(decision)
    if old.jurisdiction != new.jurisdiction:
        change = update.changes.add(path="jurisdiction")
        if new.jurisdiction:
            change.new_value.string_value = ["", "JURISDICTION_GDPR", "JURISDICTION_CCPA"][new.jurisdiction]
    return update


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(states, states), min_size=2, max_size=12), definitions)
def test_columnar_incremental_and_plain_evaluation_agree(profiles, definition):
    compiler.check(definition, "definition")
    expression = compiler.compile_all({"s": definition}, MODEL)["s"].expression
    columnar, incremental = ColumnarView(8), ColumnarView(8)
    plain = {}
    for index, (first, second) in enumerate(profiles):
        pid = f"p{index}"
        before = ProfileState(pid, 1, first[0], first[1], first[3], first[2], first[4], first[5], first[6])
        after = ProfileState(pid, 2, second[0], second[1], second[3], second[2], second[4], second[5], second[6])
        # The view keeps the days the evaluators read (and a few ahead); the profile service
        # drops older ones itself.
        after.counters = {k: v for k, v in after.counters.items() if k[0] > TODAY - 90}
        after.series = {k: v for k, v in after.series.items() if k[0] > TODAY - 90}
        plain[pid] = after
        columnar.put(after, NOW)
        if index == len(profiles) // 2:
            # Evaluated midway too: the string tests it keeps per trait path must take in the
            # strings that come after them.
            columnar.evaluate(expression, NOW)
        # Incremental: version 1 from nothing, then version 2 by its changes, through the view.
        state = ProfileState(pid)
        state.apply(changes(pid, 1, ProfileState(pid), before))
        incremental.put(state, NOW)
        state = incremental.get(pid)
        state.apply(changes(pid, 2, state, after))
        incremental.put(state, NOW)
    expected = {pid for pid, state in plain.items() if evaluate(expression, state, NOW)}
    assert set(columnar.profile_ids(columnar.evaluate(expression, NOW))) == expected, language.render(definition)
    assert {pid for pid in plain if evaluate(expression, incremental.get(pid), NOW)} == expected, language.render(
        definition
    )


@settings(max_examples=250, deadline=None)
@given(
    st.lists(st.tuples(states, states), min_size=4, max_size=12),
    st.one_of(trait_predicates(), event_predicates(), rfm_predicates),
)
def test_every_single_condition_agrees_too(profiles, definition):
    # One condition alone: its edges (`<` against `<=`, missing values) decide the result.
    test_columnar_incremental_and_plain_evaluation_agree.hypothesis.inner_test(profiles, definition)


# Profiles that all have series days, most of them within the windows drawn.
busy_series = st.dictionaries(
    st.tuples(st.sampled_from([TODAY - 31, TODAY - 8, TODAY - 1, TODAY]), st.sampled_from(SERIES)),
    partials,
    min_size=1,
    max_size=6,
)
series_states: st.SearchStrategy[tuple] = busy_series.map(lambda days: ({}, {}, {}, {}, {}, 0, days))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(series_states, series_states), min_size=4, max_size=12), event_predicates(shapes=SHAPES))
def test_every_series_condition_agrees_too(profiles, definition):
    # A series' aggregates (an average, a minimum of no events) meet their edges only here often.
    test_columnar_incremental_and_plain_evaluation_agree.hypothesis.inner_test(profiles, definition)


def _cells(view: ColumnarView, oldest: int) -> dict[str, Any]:
    """Everything a view holds, as plain values, to compare two views: the counters from the
    day `oldest` on (days before it may be expired and compacted away, or not yet)."""
    n = len(view.ids)
    cells: dict[str, Any] = {
        "ids": view.ids,
        "version": view.version[:n].tolist(),
        "counters": {
            event: [{d: c for d, c in entries.days(row).items() if d >= oldest} for row in range(n)]
            for event, entries in view.counters.items()
        },
    }
    for (source, path), columns in view.traits.items():
        cells[f"{source}:{path}"] = [str(x) for x in columns.present[:n].tolist()], columns.strings
    return cells


# Few days, so that pages shifted in time meet on the same days, and some fall outside the days kept.
few_days = st.dictionaries(
    st.tuples(st.sampled_from([TODAY - 89, TODAY - 30, TODAY, TODAY + 3]), st.sampled_from(EVENTS)),
    st.integers(1, 5),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), states, few_days), min_size=1, max_size=14),
    st.integers(1, 5),
    st.sampled_from([-96, -50, -7, 0, 7, 50, 96]),
)
def test_counters_added_a_page_at_a_time_are_the_counters_put_one_by_one(puts, page_size, shift):
    """A rebuild puts a page's profiles without counters, then adds the page's counters as
    columns: the same view as each profile put with its counters (days that fall outside the
    days kept, and profiles put again included)."""
    one_by_one, in_columns = ColumnarView(8, capacity=4), ColumnarView(8, capacity=4)
    states = [ProfileState(f"p{who}", n, s[0], s[1], s[3], c, s[4], s[5]) for n, (who, s, c) in enumerate(puts)]
    latest = 0.0
    for turn, start in enumerate(range(0, len(states), page_size)):
        # A scan's page holds a profile once. Each page is later (or earlier) than the one
        # before, so that its days meet or pass those the earlier pages' rows hold.
        page = list({state.profile_id: state for state in states[start : start + page_size]}.values())
        later = turn * shift
        page = [dataclasses.replace(s, counters={(d + later, e): n for (d, e), n in s.counters.items()}) for s in page]
        now = NOW + (later - turn % 2 * 10) * DAY  # every other page's latest days are past the days kept
        latest = max(latest, now)
        rows, days, events, counts = [], [], [], []
        names = sorted({event for state in page for _, event in state.counters})
        for state in page:
            one_by_one.put(state, now)
            in_columns.put(dataclasses.replace(state, counters={}), now)
        for state in page:
            for (day, event), count in state.counters.items():
                rows.append(in_columns.rows[state.profile_id])
                days.append(day)
                events.append(names.index(event))
                counts.append(count)
        in_columns.add_counters(*(np.array(a, np.int64) for a in (rows, days, events)), names, np.array(counts), now)
    oldest = math.floor(latest / DAY) - COUNTER_DAYS + 1
    assert _cells(in_columns, oldest) == _cells(one_by_one, oldest)
