"""How the Cassandra store packs writes grouped by partition into requests, and hands their
results to the event loop (pure logic: no node)."""

import asyncio
import threading

from mosaic.platform.store.cassandra import BYTES_PER_REQUEST, PARTITIONS_PER_REQUEST, _Results, packed

INSERT = "INSERT INTO t (k, v) VALUES (?, ?)"


def partitions(count: int, rows: int, size: int) -> dict[str, list[tuple[str, tuple]]]:
    return {f"k{p}": [(INSERT, (f"k{p}", "x" * size)) for _ in range(rows)] for p in range(count)}


def keys(request) -> set[str]:
    return {params[0] for _, params in request}


def test_small_partitions_share_requests_up_to_the_partition_limit():
    for split in (True, False):
        requests = list(packed(partitions(25, 2, 10), split=split))
        assert [len(keys(r)) for r in requests] == [PARTITIONS_PER_REQUEST, PARTITIONS_PER_REQUEST, 5]
        assert sum(len(r) for r in requests) == 50


def test_without_split_a_partition_stays_in_one_request_alone_when_it_is_too_large():
    small = [(INSERT, ("a", "x")), (INSERT, ("b", "x")), (INSERT, ("c", "x"))]
    large = [(INSERT, ("big", "x" * 1024)) for _ in range(40)]  # 40 KiB of values
    requests = list(packed({"a": small[:1], "big": large, "b": small[1:2], "c": small[2:]}, split=False))
    assert [keys(r) for r in requests] == [{"a"}, {"big"}, {"b", "c"}]
    assert len(requests[1]) == 40


def test_without_split_a_request_holds_whole_partitions_within_the_byte_limit():
    half = BYTES_PER_REQUEST // 2 // 4  # four rows a partition: a little over half the limit
    requests = list(packed(partitions(3, 4, half + 1), split=False))
    assert [len(r) for r in requests] == [4, 4, 4]


def test_with_split_a_large_partition_goes_over_several_requests_in_order():
    rows = [(INSERT, ("big", f"{i:04d}" + "x" * 1020)) for i in range(40)]
    requests = list(packed({"big": rows}, split=True))
    assert len(requests) == 2 and [s for r in requests for s in r] == rows
    assert all(sum(len(v) for _, params in r for v in params) <= BYTES_PER_REQUEST for r in requests)


async def test_results_from_the_drivers_thread_wake_the_loop_once_for_all_that_are_waiting():
    loop = asyncio.get_running_loop()
    wakeups = []
    plain = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *args: (wakeups.append(args), plain(*args))[1]
    try:
        results = _Results(loop)
        futures = [loop.create_future() for _ in range(100)]

        def driver() -> None:
            for index, future in enumerate(futures):
                results.put(future, index, ValueError("bad") if index == 7 else None)

        thread = threading.Thread(target=driver)
        thread.start()
        thread.join()  # the loop is held meanwhile: every result is waiting when it runs
        done = await asyncio.gather(*futures, return_exceptions=True)
        assert [d for i, d in enumerate(done) if i != 7] == [i for i in range(100) if i != 7]
        assert isinstance(done[7], ValueError)
        assert len(wakeups) == 1
        future = loop.create_future()
        results.put(future, "later", None)  # after the loop ran: it is woken again
        assert await future == "later" and len(wakeups) == 2
    finally:
        del loop.call_soon_threadsafe


def test_nothing_to_pack_is_no_request():
    assert list(packed({}, split=True)) == [] and list(packed({}, split=False)) == []
