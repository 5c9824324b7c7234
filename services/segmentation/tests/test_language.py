"""The segment language: parsing, rendering, round-trips and errors. Pure logic."""

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic.platform.errors import InvalidArgument
from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service import compiler, language

EXAMPLE = (
    'traits.plan = "pro" and count(event "Order Completed" in last 30d) >= 2 '
    'and not count(event "Email Opened" in last 14d) > 0'
)


def test_the_issue_example_parses_into_the_tree_it_says():
    expression = language.parse(EXAMPLE)
    plan, orders, opened = getattr(expression, "and").operands
    assert plan.trait.path == ["plan"] and plan.trait.operator == pb.OPERATOR_EQUALS
    assert plan.trait.values[0].string_value == "pro"
    assert orders.event.event == "Order Completed" and orders.event.window.last.seconds == 30 * 86400
    assert orders.event.operator == pb.OPERATOR_GREATER_OR_EQUAL and orders.event.value.number_value == 2
    assert getattr(opened, "not").event.window.last.seconds == 14 * 86400
    assert language.render(expression) == EXAMPLE


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("traits.a.b in [1,'x']".replace("'", '"'), 'traits.a.b in [1, "x"]'),
        ("traits.x not in [true]", "traits.x not in [true]"),
        ("rfm.recency>=4 and rfm.fm between 2 and 3", "rfm.recency >= 4 and rfm.fm between 2 and 3"),
        ("rfm.monetary not in [1,2] or traits.rfm = 1", "rfm.monetary not in [1, 2] or traits.`rfm` = 1"),
        ("traits.seen < now-720h", "traits.seen < now - 30d"),
        ('traits.seen >= time "2026-01-02"', 'traits.seen >= time "2026-01-02T00:00:00Z"'),
        ("computed.ltv between 1 and 2.5", "computed.ltv between 1 and 2.5"),
        ('traits.`first name` starts with "A"', 'traits.`first name` starts with "A"'),
        (
            'traits.email ends with "@acme.com" or traits.email matches "^a+$"',
            'traits.email ends with "@acme.com" or traits.email matches "^a+$"',
        ),
        ("traits.nick exists and traits.age is missing", "traits.nick exists and traits.age is missing"),
        ("has email and is known or is anonymous", "has email and is known or is anonymous"),
        (
            'in segment "vip" and not (traits.a = 1 or traits.b = 2)',
            'in segment "vip" and not (traits.a = 1 or traits.b = 2)',
        ),
        (
            'count(event "Page" between now - 60d and now - 30d) = 0',
            'count(event "Page" between now - 60d and now - 30d) = 0',
        ),
        ('count(event "Page") > 1', 'count(event "Page") > 1'),
        ("(traits.a = 1 and traits.b = 2) and traits.c = 3", "(traits.a = 1 and traits.b = 2) and traits.c = 3"),
    ],
)
def test_text_comes_back_in_canonical_form(text, canonical):
    assert language.render(language.parse(text)) == canonical
    assert language.parse(canonical) == language.parse(text)


@pytest.mark.parametrize(
    ("text", "where", "expects"),
    [
        ("traits.plan = ", "line 1 column", "a number"),
        ("traits.plan == 1", "line 1 column 14", "a string"),
        ("traits.x = 1\nand traits.y ~ 2", "line 2 column 14", "a comparison"),
        ("plan = 1", "line 1 column 1", "traits. or computed."),
        ('count(event "A" in last 3w) > 1', "line 1 column 25", "a duration"),
    ],
)
def test_a_syntax_error_names_the_line_the_column_and_what_was_expected(text, where, expects):
    with pytest.raises(InvalidArgument) as caught:
        language.parse(text)
    assert caught.value.field == "definition"
    assert where in caught.value.rule and expects in caught.value.rule


@pytest.mark.parametrize(
    ("text", "field", "rule"),
    [
        ('traits.x matches "("', "segment.definition", "regular expression"),
        ("traits.x > true", "segment.definition.trait.values[0]", "no order"),
        ("traits.x contains 1", "segment.definition.trait.values[0]", "must be a string"),
        ('traits.x between 1 and "b"', "segment.definition.trait.values", "one type"),
        ('count(event "A" in last 91d) > 1', "segment.definition.event.window.last", "90d"),
        ('sum(event "A" in last 9d) > 1', "segment.definition.event.property", "required for AGGREGATE_SUM"),
        ('count(event "A".total in last 9d) > 1', "segment.definition.event.property", "counts events"),
        ('count(event "A" where x > true) > 1', "segment.definition.event.filters[0].value", "no order"),
        (
            'count(event "A" where x = 1 and y = now - 1d) > 1',
            "segment.definition.event.filters[1].value",
            "a string, a number or a boolean",
        ),
        ('avg(event "A".total in last 91d) > 1', "segment.definition.event.window.last", "90d"),
        ('count(event "A") > "x"', "segment.definition.event.value", "number"),
        ("rfm.recency >= 6", "segment.definition", "line 1 column 16: rfm.recency is compared with 6: an RFM"),
        ("has email and\n rfm.fm in [1, 0]", "segment.definition", "line 2 column 16: rfm.fm is compared with 0"),
        ("rfm.monetary = 2.5", "segment.definition", "a whole number from 1 to 5"),
        ("rfm.loyalty > 1", "segment.definition", "line 1 column 5: rfm.loyalty is not an RFM score; expected one"),
    ],
)
def test_a_definition_breaking_a_rule_names_the_node_and_the_rule(text, field, rule):
    with pytest.raises(InvalidArgument) as caught:
        compiler.definition_of(pb.Segment(definition=text))
    assert caught.value.field == field and rule in caught.value.rule


@pytest.mark.parametrize(
    ("predicate", "field", "rule"),
    [
        (pb.RfmPredicate(operator=pb.OPERATOR_EQUALS, values=[1]), "expression.rfm.score", "rfm.recency"),
        (
            pb.RfmPredicate(score=pb.RFM_SCORE_RECENCY, operator=pb.OPERATOR_CONTAINS, values=[1]),
            "expression.rfm.operator",
            "one of",
        ),
        (
            pb.RfmPredicate(score=pb.RFM_SCORE_FREQUENCY, operator=pb.OPERATOR_BETWEEN, values=[1]),
            "expression.rfm.values",
            "needs 2",
        ),
        (pb.RfmPredicate(score=pb.RFM_SCORE_MONETARY, operator=pb.OPERATOR_IN), "expression.rfm.values", "one or more"),
        (
            pb.RfmPredicate(score=pb.RFM_SCORE_FREQUENCY_MONETARY, operator=pb.OPERATOR_IN, values=[2, 9]),
            "expression.rfm.values[1]",
            "1 to 5",
        ),
    ],
)
def test_an_rfm_condition_sent_as_a_tree_is_checked_like_its_text(predicate, field, rule):
    with pytest.raises(InvalidArgument) as caught:
        compiler.definition_of(expression=pb.Expression(rfm=predicate), field="")
    assert caught.value.field == field and rule in caught.value.rule


def test_exactly_one_form_of_definition_is_accepted():
    with pytest.raises(InvalidArgument, match="exactly one"):
        compiler.definition_of(pb.Segment())
    with pytest.raises(InvalidArgument, match="exactly one"):
        compiler.definition_of(pb.Segment(definition="has email", expression=language.parse("has email")))


def test_the_legacy_condition_becomes_an_expression():
    condition = pb.Condition(
        all=pb.ConditionList(
            conditions=[
                pb.Condition(trait=pb.TraitCondition(trait="plan", operator=pb.OPERATOR_EQUALS)),
            ]
        )
    )
    condition.all.conditions[0].trait.value.string_value = "pro"
    text, _ = compiler.definition_of(pb.Segment(condition=condition))
    assert text == 'traits.plan = "pro"'


@pytest.mark.parametrize(
    ("condition", "field"),
    [
        (pb.Condition(), "segment.condition"),
        (pb.Condition(trait=pb.TraitCondition(trait="", operator=pb.OPERATOR_EXISTS)), "segment.condition.trait.trait"),
        (pb.Condition(trait=pb.TraitCondition(trait="plan")), "segment.condition.trait.operator"),
        (
            pb.Condition(trait=pb.TraitCondition(trait="plan", operator=pb.OPERATOR_EQUALS)),
            "segment.condition.trait.value",
        ),
        (pb.Condition(all=pb.ConditionList()), "segment.condition.all.conditions"),
        (pb.Condition(any=pb.ConditionList(conditions=[pb.Condition()])), "segment.condition.any.conditions[0]"),
    ],
)
def test_an_invalid_legacy_condition_names_the_field(condition, field):
    with pytest.raises(InvalidArgument) as caught:
        compiler.definition_of(pb.Segment(condition=condition))
    assert caught.value.field == field


def test_references_are_inlined_and_cycles_refused():
    definitions = {"a": language.parse('traits.x = 1 and in segment "b"'), "b": language.parse("has email")}
    compiled = compiler.compile_all(definitions)
    assert compiled["a"].reads == {"traits.x", "identities"} and compiled["a"].refers_to == {"b"}
    assert language.render(compiled["a"].expression) == "traits.x = 1 and has email"
    definitions["b"] = language.parse('in segment "a"')
    with pytest.raises(InvalidArgument, match="cycle"):
        compiler.compile_all(definitions)
    with pytest.raises(InvalidArgument, match="does not exist"):
        compiler.compile_all({"a": language.parse('in segment "nope"')})


# Random valid trees: render then parse gives the same tree back.
keys = st.text(st.characters(codec="utf-8", exclude_characters="`\n\r"), min_size=1, max_size=8) | st.sampled_from(
    ["plan", "and", "count", "a-b", "$x"]
)
numbers = st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f + 0.0)
durations = st.integers(1, 90 * 86400).map(lambda s: duration_pb2.Duration(seconds=s))
times = st.integers(0, 4_000_000_000_000_000).map(
    lambda us: timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)
)
relative = st.integers(-(10**8), 10**8).map(
    lambda s: pb.Literal(relative_time=pb.RelativeTime(offset=duration_pb2.Duration(seconds=s)))
)
time_literals = times.map(lambda t: pb.Literal(timestamp_value=t)) | relative
strings = st.text(max_size=10).map(lambda s: pb.Literal(string_value=s))
scalars = (
    strings
    | numbers.map(lambda n: pb.Literal(number_value=n))
    | st.booleans().map(lambda b: pb.Literal(bool_value=b))
    | time_literals
)
ordered = strings | numbers.map(lambda n: pb.Literal(number_value=n)) | time_literals


@st.composite
def traits(draw):
    source = draw(st.sampled_from([pb.TRAIT_SOURCE_TRAITS, pb.TRAIT_SOURCE_COMPUTED]))
    path = draw(st.lists(keys, min_size=1, max_size=3))
    op = draw(st.sampled_from(list(pb.Operator.values())[1:]))
    if op in (pb.OPERATOR_EXISTS, pb.OPERATOR_IS_MISSING):
        values = []
    elif op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
        values = draw(st.lists(scalars, min_size=1, max_size=3))
    elif op in compiler.STRINGY:
        values = (
            [draw(strings)]
            if op != pb.OPERATOR_MATCHES
            else [pb.Literal(string_value=draw(st.sampled_from(["^a", "b+", "x|y"])))]
        )
    elif op == pb.OPERATOR_BETWEEN:
        values = draw(
            st.sampled_from(
                [
                    [draw(strings), draw(strings)],
                    [pb.Literal(number_value=draw(numbers)), pb.Literal(number_value=draw(numbers))],
                    [draw(time_literals), draw(time_literals)],
                ]
            )
        )
    elif op in compiler.ORDERED:
        values = [draw(ordered)]
    else:
        values = [draw(scalars)]
    return pb.Expression(trait=pb.TraitPredicate(source=source, path=path, operator=op, values=values))


@st.composite
def events(draw):
    window = draw(st.sampled_from(["last", "between", "ever"]))
    predicate = pb.EventPredicate(
        aggregate=pb.AGGREGATE_COUNT,
        event=draw(st.text(min_size=1, max_size=12)),
        operator=draw(st.sampled_from(list(language.SYMBOLS))),
        value=pb.Literal(number_value=draw(st.integers(0, 100))),
    )
    if window == "last":
        predicate.window.last.CopyFrom(draw(durations))
    elif window == "between":
        predicate.window.between.CopyFrom(pb.TimeRange(**{"from": draw(time_literals), "to": draw(time_literals)}))
    else:
        predicate.window.ever = True
    return pb.Expression(event=predicate)


identities = st.sampled_from([pb.IDENTITY_FACT_KNOWN, pb.IDENTITY_FACT_ANONYMOUS]).map(
    lambda f: pb.Expression(identity=pb.IdentityPredicate(fact=f))
) | keys.map(lambda k: pb.Expression(identity=pb.IdentityPredicate(fact=pb.IDENTITY_FACT_HAS_TYPE, type=k)))
references = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,10}\Z").map(
    lambda s: pb.Expression(segment=pb.SegmentReference(segment_id=s))
)
consents = st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z").map(
    lambda p: pb.Expression(consent=pb.ConsentPredicate(purpose=p))
)
scores = st.builds(
    lambda score, op, values: pb.Expression(
        rfm=pb.RfmPredicate(
            score=score,
            operator=op,
            values=values[:2] if op == pb.OPERATOR_BETWEEN else values if op in (9, 10) else values[:1],
        )
    ),
    st.sampled_from(list(pb.RfmScore.values())[1:]),
    st.sampled_from([*language.SYMBOLS, pb.OPERATOR_IN, pb.OPERATOR_NOT_IN, pb.OPERATOR_BETWEEN]),
    st.lists(st.integers(1, 5), min_size=2, max_size=4),
)
leaves = traits() | events() | identities | references | consents | scores
expressions = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, min_size=2, max_size=3).map(lambda o: pb.Expression(**{"and": pb.Operands(operands=o)}))  # type: ignore[arg-type]  # the stub cannot name fields and/or/not (Python keywords)
        | st.lists(inner, min_size=2, max_size=3).map(lambda o: pb.Expression(**{"or": pb.Operands(operands=o)}))  # type: ignore[arg-type]  # the stub cannot name fields and/or/not (Python keywords)
        | inner.map(lambda e: pb.Expression(**{"not": e}))
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_every_valid_tree_renders_to_text_that_parses_back_to_it(expression):
    compiler.check(expression, "expression")
    text = language.render(expression)
    assert language.parse(text) == expression, text
