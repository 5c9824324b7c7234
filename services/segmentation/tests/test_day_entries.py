import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service.columns import COUNTS, ColumnarView
from segmentation_service.day_entries import COMPACT_AFTER, DayEntries
from segmentation_service.state import DAY, ProfileState


def test_a_row_put_again_holds_only_its_new_days_in_the_order_put():
    entries = DayEntries(COUNTS)
    entries.put(3, {10: 1, 12: 2}, oldest=0)
    entries.put(5, {11: 7}, oldest=0)
    entries.put(3, {14: 4, 13: 5}, oldest=0)
    assert entries.days(3) == {14: 4, 13: 5} and list(entries.days(3)) == [14, 13]
    assert entries.days(5) == {11: 7} and entries.days(4) == {} and entries.days(10_000) == {}
    assert entries.holes == 2
    counts, _ = entries.aggregate(pb.AGGREGATE_COUNT, 12, 14, 6)
    assert counts.tolist() == [0, 0, 0, 9, 0, 0]  # the row's old day 12 is a hole, not counted


def test_compacting_drops_holes_and_expired_days_and_keeps_every_row_whole():
    entries = DayEntries(COUNTS)
    for row in range(3000):
        entries.put(row, {100: 1, 200: row % 7 + 1}, oldest=0)
    for row in range(3000):  # every row put again: its old entries become holes
        entries.put(row, {201: 2, 202: 3} if row % 2 == 0 else {100: 1, 200: row % 7 + 1}, oldest=0)
    assert entries.holes == 6000 > COMPACT_AFTER and entries.size == 12000
    entries.put(3, {}, oldest=150)  # now holes are most: compacted, day 100 expired
    assert entries.holes == 0, "a clear past the holes' bound compacts"
    assert entries.days(0) == {201: 2, 202: 3}
    assert entries.days(1) == {200: 2}, "day 100 is before the oldest kept: dropped"
    assert entries.days(3) == {}
    assert entries.size == sum(len(entries.days(row)) for row in range(3000))
    counts, _ = entries.aggregate(pb.AGGREGATE_COUNT, 0, 1000, 3000)
    assert counts[0] == 5 and counts[1] == 2 and counts[3] == 0


def test_added_columns_replace_what_the_rows_held():
    entries = DayEntries(COUNTS)
    entries.put(2, {50: 9}, oldest=0)
    rows, days, counts = np.array([4, 2, 4, 9]), np.array([51, 52, 53, 54]), np.array([1, 2, 3, 4])
    entries.add(rows, days, [counts], oldest=0)
    assert entries.days(2) == {52: 2}
    assert entries.days(4) == {51: 1, 53: 3}
    assert entries.days(9) == {54: 4}


def test_a_view_of_many_profiles_pays_for_the_counters_of_those_that_have_them():
    # A dense ring of 96 days would cost 192 B a row for an event one profile of 100,000 has.
    now = 20_000 * DAY
    view = ColumnarView(8)
    for i in range(100_000):
        view.put(ProfileState(f"p{i}", 1, {"plan": "pro"}), now)
    before = view.nbytes()
    view.put(ProfileState("p99999", 2, {"plan": "pro"}, counters={(20_000, "Order Completed"): 3}), now)
    assert view.nbytes() - before < 100_000 * 6
    assert view.get("p99999").counters == {(20_000, "Order Completed"): 3}


# Operations on a few rows: put (days of a small range, some expired), clear, add (a page of
# rows at once), with `oldest` moving on, so that compaction (forced by a low bound) drops holes
# and expired days between them.
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"), st.integers(0, 7), st.dictionaries(st.integers(1, 12), st.integers(1, 9), max_size=5)
        ),
        st.tuples(st.just("clear"), st.integers(0, 7), st.just({})),
        st.tuples(
            st.just("add"),
            st.just(0),
            st.dictionaries(st.tuples(st.integers(0, 7), st.integers(1, 12)), st.integers(1, 9), max_size=8),
        ),
        st.tuples(st.just("later"), st.just(0), st.just({})),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_entries_hold_what_a_dict_of_rows_holds_from_the_oldest_day_on(ops):
    import segmentation_service.day_entries as module

    saved = module.COMPACT_AFTER
    module.COMPACT_AFTER = 2  # compact often
    try:
        entries, model, oldest = DayEntries(COUNTS), {}, 1
        for op, row, days in ops:
            if op == "put":
                entries.put(row, days, oldest)
                model[row] = dict(days)
            elif op == "clear":
                entries.put(row, {}, oldest)
                model.pop(row, None)
            elif op == "add":
                rows = sorted({r for r, _ in days})
                for r in rows:
                    model[r] = {d: c for (r2, d), c in days.items() if r2 == r}
                items = list(days.items())
                entries.add(
                    np.array([r for (r, _), _ in items], np.int64),
                    np.array([d for (_, d), _ in items], np.int64),
                    [np.array([c for _, c in items], np.int64)],
                    oldest,
                )
            else:
                oldest += 2
            for r in range(8):
                kept = {d: c for d, c in model.get(r, {}).items() if d >= oldest}
                held = {d: c for d, c in entries.days(r).items() if d >= oldest}
                assert held == kept, (r, op)
                assert set(entries.days(r)) <= set(model.get(r, {})), "a day never put"
            counts, _ = entries.aggregate(pb.AGGREGATE_COUNT, oldest, 12, 8)
            assert counts.tolist() == [sum(c for d, c in model.get(r, {}).items() if d >= oldest) for r in range(8)]
        assert entries.size - entries.holes == sum(len(entries.days(r)) for r in range(8))
    finally:
        module.COMPACT_AFTER = saved
