"""The columnar view's rows: removed, forgotten by partition and erased. Pure logic."""

import asyncio

from mosaic.platform.topics import partition_of
from segmentation_service import app, compiler, series
from segmentation_service.columns import ColumnarView
from segmentation_service.evaluate import evaluate
from segmentation_service.state import DAY, ProfileState

PRO = compiler.definition_of(text='traits.plan = "pro"')[1]


def view_of(*profile_ids: str) -> ColumnarView:
    view = ColumnarView(8)
    for profile_id in profile_ids:
        view.put(ProfileState(profile_id, 1, {"plan": "pro"}), 0.0)
    return view


def matching(view: ColumnarView) -> list[str]:
    return view.profile_ids(view.evaluate(PRO, 0.0))


def test_a_removed_row_no_longer_counts_and_its_row_is_taken_by_the_next():
    view = view_of("a", "b")
    view.remove("a")
    assert (len(view), matching(view), "a" in view) == (1, ["b"], False)
    view.put(ProfileState("c", 1, {"plan": "free"}), 0.0)
    assert (len(view), matching(view), len(view.ids)) == (2, ["b"], 2)  # c took a's row, cleared


async def test_forgetting_partitions_drops_their_rows_from_counts_and_samples_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(app, "FORGOTTEN_PER_TURN", 5)
    ids = [f"p{i}" for i in range(40)]
    view = view_of(*ids)
    handed = frozenset({0, 1, 2, 3})
    held: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:  # the loop runs between chunks: it sees the view part forgotten
        while not done.is_set():
            held.append(len(view))
            await asyncio.sleep(0)

    watching = asyncio.create_task(watch())
    gone = await app.forget(view, handed)
    done.set()
    await watching
    assert gone > 10 and len(view) == 40 - gone
    assert any(40 - gone < n < 40 for n in held)
    assert sorted(matching(view)) == sorted(pid for pid in ids if partition_of(pid, 8) not in handed)
    assert None not in matching(view)


def test_an_erased_profile_leaves_the_view_and_is_not_put_back():
    view = view_of("a", "b")
    assert view.erase(["a", "never-seen"]) == 1
    assert (len(view), matching(view)) == (1, ["b"])
    view.put(ProfileState("a", 2, {"plan": "pro"}), 0.0)  # a late update
    view.put(ProfileState("never-seen", 1, {"plan": "pro"}), 0.0)
    assert (len(view), matching(view)) == (1, ["b"])


def test_a_string_test_kept_from_an_earlier_estimate_takes_in_the_strings_that_came_since():
    ends = compiler.definition_of(text='traits.email ends with "@gmail.com"')[1]
    view = ColumnarView(8)
    view.put(ProfileState("a", 1, {"email": "a@gmail.com"}), 0.0)
    view.put(ProfileState("b", 1, {"email": "b@corp.example"}), 0.0)
    assert view.profile_ids(view.evaluate(ends, 0.0)) == ["a"]
    view.put(ProfileState("c", 1, {"email": "c@gmail.com"}), 0.0)  # a new string, after the test was kept
    view.put(ProfileState("b", 2, {"email": "b@gmail.com"}), 0.0)  # and b's moves to another one
    assert sorted(view.profile_ids(view.evaluate(ends, 0.0))) == ["a", "b", "c"]
    # More literals than a path keeps tests for: the first ones are tested again, still right.
    for n in range(20):
        suffix = compiler.definition_of(text=f'traits.email ends with "{n}.example"')[1]
        assert view.profile_ids(view.evaluate(suffix, 0.0)) == []
    assert sorted(view.profile_ids(view.evaluate(ends, 0.0))) == ["a", "b", "c"]


def test_a_string_ordering_agrees_with_the_plain_evaluator_at_its_edges():
    values = ["", "p", "pro", "prof", "q", "Ünïcode", "\U0001f600"]
    view = ColumnarView(8)
    states = {f"p{i}": ProfileState(f"p{i}", 1, {"plan": v}) for i, v in enumerate(values)}
    for state in states.values():
        view.put(state, 0.0)
    for op in ("<", "<=", ">", ">="):
        for literal in ["pro", "", "Ü", "\U0001f600"]:
            definition = compiler.definition_of(text=f'traits.plan {op} "{literal}"')[1]
            expected = {pid for pid, state in states.items() if evaluate(definition, state, 0.0)}
            assert set(view.profile_ids(view.evaluate(definition, 0.0))) == expected, (op, literal)


def test_series_days_are_replaced_with_the_row_removed_with_it_and_compacted_as_holes_pile_up():
    text = 'sum(event "Order Completed".revenue in last 30d) >= 10'
    expression = compiler.definition_of(text=text)[1]
    name = series.name_of(expression.event)
    now = 100 * DAY + 3600
    view = ColumnarView(8)
    states = {
        f"p{i}": ProfileState(f"p{i}", 1, series={(100, name): (1, float(i), float(i), float(i))}) for i in range(3000)
    }
    for state in states.values():
        view.put(state, now)
    for round_ in range(3):  # every row's day replaced: the old entries become holes, then go
        for i, state in enumerate(states.values()):
            state.series = {(100, name): (1, float(i + round_), 0.0, 0.0), (99, name): (2, 1.0, 0.5, 0.5)}
            view.put(state, now)
    columns = view.series[name]
    # 18,000 entries were put, 6,000 are left: compacted as they went, not grown to hold them all.
    assert columns.size - columns.holes == 6000 and len(columns.row) <= 16384
    for pid in ("p0", "p9", "p2999"):
        assert view.get(pid).series == states[pid].series
    expected = {pid for pid, state in states.items() if evaluate(expression, state, now)}
    assert set(view.profile_ids(view.evaluate(expression, now))) == expected and len(expected) == 2993
    view.remove("p2999")
    assert "p2999" not in view.profile_ids(view.evaluate(expression, now)) and view.series[name].days(2999) == {}


def test_every_aggregate_of_a_series_agrees_with_the_plain_evaluator_row_by_row():
    now = 100 * DAY + 3600
    where = 'event "Order Completed".revenue where currency = "EUR"'
    name = series.name_of(compiler.definition_of(text=f"sum({where}) > 0")[1].event)
    days = [{}, {(100, name): (1, 3.0, 3.0, 3.0)}, {(100, name): (3, 6.0, 1.0, 4.0), (95, name): (1, -2.0, -2.0, -2.0)}]
    view = ColumnarView(8)
    states = [ProfileState(f"p{i}", 1, series=d) for i, d in enumerate(days)]
    for state in states:
        view.put(state, now)
    for aggregate in ("sum", "avg", "min", "max"):
        for window in ("", " in last 1d", " in last 10d"):
            for threshold in (-2, 0, 1.5, 2, 3, 4):
                for op in ("=", ">", "<="):
                    expression = compiler.definition_of(text=f"{aggregate}({where}{window}) {op} {threshold}")[1]
                    expected = [s.profile_id for s in states if evaluate(expression, s, now)]
                    assert view.profile_ids(view.evaluate(expression, now)) == expected, (
                        aggregate,
                        window,
                        op,
                        threshold,
                    )
