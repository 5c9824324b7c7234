"""The privacy participant's export parts: cut between list items, put back together whole."""

import json

from mosaic.platform.privacy import merge_parts, split_document


def test_a_document_is_cut_into_parts_under_the_limit_and_merged_back_whole():
    document = {
        "owner": "profile",
        "events": [{"n": i, "pad": "x" * 100} for i in range(50)],
        "snapshots": [{"v": i} for i in range(5)],
        "empty": [],
    }
    parts = split_document(document, limit=1000)
    assert len(parts) > 5 and all(len(p) <= 1000 for p in parts)
    assert merge_parts(parts) == document


def test_an_item_over_the_limit_travels_alone():
    document = {"events": [{"big": "x" * 5000}, {"small": 1}]}
    parts = split_document(document, limit=1000)
    assert [len(json.loads(p)["events"]) for p in parts] == [1, 1]
    assert merge_parts(parts) == document


def test_a_document_without_lists_is_one_part():
    assert split_document({"owner": "consent"}) == ['{"owner": "consent"}']
    assert merge_parts(split_document({})) == {}
