"""The merge decision as a pure function: limits, caps, priority, survivor."""

from collections import Counter

from identity_service.graph import Component, MemoryGraph, decide
from identity_service.rules import NEWEST, Rules
from mosaic.identity.v1 import identity_pb2


def i(id_type: str, value: str) -> identity_pb2.Identifier:
    return identity_pb2.Identifier(type=id_type, value=value)


def component(root: str, created: int, **counts) -> Component:
    return Component(root, created, profiles={root}, counts=Counter(counts))


def test_no_match_links_everything_to_a_new_profile():
    plan = decide([i("user_id", "u"), i("email", "e")], {}, {}, Rules())
    assert plan.survivor is None and [x.value for x in plan.link] == ["u", "e"]


def test_two_profiles_merge_into_the_oldest():
    roots = {("email", "e"): "young", ("anonymous_id", "a"): "old"}
    comps = {"young": component("young", 20, email=1), "old": component("old", 10, anonymous_id=1)}
    plan = decide([i("email", "e"), i("anonymous_id", "a")], roots, comps, Rules())
    assert plan.survivor == "old" and [r for r, _ in plan.merged] == ["young"]
    assert decide([i("email", "e"), i("anonymous_id", "a")], roots, comps, Rules(survivor=NEWEST)).survivor == "young"


def test_two_user_ids_never_merge_and_the_lower_priority_identifier_is_left_out():
    roots = {("email", "e"): "p1"}
    plan = decide([i("user_id", "u2"), i("email", "e")], roots, {"p1": component("p1", 1, user_id=1, email=1)}, Rules())
    assert plan.survivor is None and [x.value for x in plan.link] == ["u2"]
    assert plan.unlinked == [(i("email", "e"), "merge would exceed limit user_id=1", "p1")]


def test_caps_stop_merges_and_mappings_but_the_event_still_resolves():
    rules = Rules(max_merges=1, max_mappings=2)
    big = Component("p1", 1, profiles={"p1", "p0"}, counts=Counter(anonymous_id=2))
    roots = {("anonymous_id", "a"): "p1", ("anonymous_id", "b"): "p2"}
    plan = decide(
        [i("anonymous_id", "a"), i("anonymous_id", "b"), i("email", "new")],
        roots,
        {"p1": big, "p2": component("p2", 2, anonymous_id=1)},
        rules,
    )
    assert plan.survivor == "p1" and plan.merged == []
    assert [reason for _, reason, _ in plan.unlinked] == ["merge cap 1 reached", "mapping cap 2 reached"]


def test_a_split_pair_is_never_merged_again():
    split = Component("p2", 2, profiles={"p2"}, never_merge={"p1"})
    plan = decide(
        [i("anonymous_id", "a"), i("email", "e")],
        {("anonymous_id", "a"): "p1", ("email", "e"): "p2"},
        {"p1": component("p1", 1), "p2": split},
        Rules(),
    )
    assert plan.survivor == "p1" and plan.unlinked[0][1] == "profiles were split by an operator"


def test_memory_graph_builds_clusters_like_the_resolver():
    graph = MemoryGraph(Rules())
    graph.apply("m1", 1, [i("anonymous_id", "a")])
    graph.apply("m2", 2, [i("anonymous_id", "b")])
    graph.apply("m3", 3, [i("user_id", "u"), i("anonymous_id", "a"), i("anonymous_id", "b")])
    assert list(graph.clusters().values()) == [{("anonymous_id", "a"), ("anonymous_id", "b"), ("user_id", "u")}]
