"""The columnar view's rows: removed, forgotten by partition and erased. Pure logic."""

from mosaic.platform.topics import partition_of
from segmentation_service import compiler
from segmentation_service.columns import ColumnarView
from segmentation_service.evaluate import evaluate
from segmentation_service.state import ProfileState

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


def test_forgetting_partitions_drops_their_rows_from_counts_and_samples():
    ids = [f"p{i}" for i in range(40)]
    view = view_of(*ids)
    handed = frozenset({0, 1, 2, 3})
    gone = view.forget(handed)
    assert gone > 0 and len(view) == 40 - gone
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
