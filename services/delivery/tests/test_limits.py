"""Rate limit, circuit breaker, retry schedule and Retry-After: pure logic on a fake clock."""

import random
from datetime import datetime, timezone
from email.utils import format_datetime

from delivery_service.limits import CircuitBreaker, TokenBucket, retry_delay
from delivery_service.webhook import retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_its_burst_through_then_spaces_starts_by_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    assert [bucket.wait_time(), bucket.wait_time()] == [0.0, 0.0]
    assert abs(bucket.wait_time() - 0.1) < 1e-9
    clock.now += 1
    assert bucket.wait_time() == 0.0


def test_a_bucket_with_rate_zero_never_waits():
    bucket = TokenBucket(rate=0)
    assert all(bucket.wait_time() == 0 for _ in range(1000))
    assert bucket.ready()[1] == 0.0


def test_a_bucket_says_what_it_holds_without_spending_it():
    clock = Clock()
    bucket = TokenBucket(rate=0.5, burst=3, clock=clock)
    assert bucket.ready() == (3, 0.0) and bucket.ready() == (3, 0.0)
    for _ in range(3):
        assert bucket.wait_time() == 0.0
    assert bucket.ready() == (0, 2.0)  # one token in 2 s at 0.5 a second
    clock.now += 1
    assert bucket.ready() == (0, 1.0)
    clock.now += 1
    assert bucket.ready() == (1, 0.0)


def test_the_circuit_opens_after_failures_in_a_row_and_a_probe_closes_it():
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=2.0, clock=clock)
    breaker.failed(), breaker.failed(), breaker.succeeded(), breaker.failed(), breaker.failed()
    assert breaker.state == "closed"  # a success in between resets the count
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 2.0
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow()  # one probe only
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()


def test_a_failed_probe_reopens_the_circuit_for_longer():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, max_cooldown=3.0, clock=clock)
    breaker.failed()
    clock.now += 1.0
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == "open" and breaker.wait_time() == 2.0
    clock.now += 2.0
    assert breaker.allow()
    breaker.failed()
    assert breaker.wait_time() == 3.0  # capped


def test_an_abandoned_probe_lets_the_next_send_probe():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, clock=clock)
    breaker.failed()
    clock.now += 1.0
    assert breaker.allow()
    breaker.abandon_probe()
    assert breaker.allow()


def test_retry_delays_are_jittered_below_an_exponential_ceiling():
    rng = random.Random(7)
    for attempt in range(1, 8):
        delays = [retry_delay(attempt, base=0.5, cap=10.0, rng=rng) for _ in range(200)]
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        assert all(0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered, not one fixed value


def test_retry_after_wins_over_backoff_and_is_capped():
    assert retry_delay(1, retry_after=7.0) == 7.0
    assert retry_delay(1, retry_after=10_000, cap=300) == 300


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds("120") == 120.0
    when = datetime(2030, 1, 1, 0, 1, 0, tzinfo=timezone.utc)
    assert retry_after_seconds(format_datetime(when, usegmt=True), now=when.timestamp() - 60) == 60.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
