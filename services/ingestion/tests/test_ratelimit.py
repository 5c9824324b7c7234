"""The token bucket: pure logic on a fake clock."""

import pytest

from ingestion_service.ratelimit import RateLimited, RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_let_in_then_the_rate_holds():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    for _ in range(10):
        limiter.admit("web", 1, rate=10, burst=10)
    with pytest.raises(RateLimited) as caught:
        limiter.admit("web", 1, rate=10, burst=10)
    assert caught.value.retry_after == pytest.approx(0.1)
    clock.now = 0.1
    limiter.admit("web", 1, rate=10, burst=10)


def test_a_batch_larger_than_the_burst_goes_in_once_and_its_debt_holds_the_next_back():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limiter.admit("web", 25, rate=10, burst=5)  # let in: the bucket had a token
    with pytest.raises(RateLimited) as caught:
        limiter.admit("web", 1, rate=10, burst=5)
    assert caught.value.retry_after == pytest.approx(2.1)  # 20 tokens of debt, then one
    clock.now = 2.1
    limiter.admit("web", 1, rate=10, burst=5)


def test_sources_have_their_own_buckets_and_no_rate_means_no_limit():
    limiter = RateLimiter(clock=Clock())
    limiter.admit("a", 1, rate=1, burst=1)
    limiter.admit("b", 1, rate=1, burst=1)
    for _ in range(1000):
        limiter.admit("c", 100, rate=0, burst=0)


def test_each_replica_enforces_its_share():
    limiter = RateLimiter(share=0.5, clock=Clock())
    limiter.admit("web", 5, rate=10, burst=10)  # half of the burst of 10
    with pytest.raises(RateLimited):
        limiter.admit("web", 1, rate=10, burst=10)


def test_many_ids_keep_only_the_buckets_that_are_not_full_and_those_still_hold_back():
    clock = Clock()
    limiter = RateLimiter(clock=clock, prune_above=3)
    limiter.admit("busy", 10, rate=1, burst=2)  # 8 tokens of debt
    limiter.admit("idle-1", 1, rate=1, burst=2)
    limiter.admit("idle-2", 1, rate=1, burst=2)
    clock.now = 5.0  # the idle buckets are full again; the busy one is still in debt
    limiter.admit("new", 1, rate=1, burst=2)
    assert len(limiter) == 2  # busy and new
    with pytest.raises(RateLimited) as caught:
        limiter.admit("busy", 1, rate=1, burst=2)
    assert caught.value.retry_after == pytest.approx(4.0)  # 3 still owed at 5 s, then one token


def test_retry_after_is_whole_seconds_and_never_zero():
    assert [retry_after_header(s) for s in (0.001, 1.0, 1.2, 6)] == ["1", "1", "2", "6"]
