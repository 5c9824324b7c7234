"""The retry helper: its waits, and a tenacity loop carried on from a failure raised outside it."""

from __future__ import annotations

import random

import pytest
import tenacity

from mosaic.platform import retry


def test_backoff_doubles_from_the_base_up_to_the_cap():
    assert [retry.backoff(n, 0.2, 1.0) for n in range(1, 6)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_hint_wins_over_backoff_and_is_capped():
    assert retry.delay(3, 7.0, base=0.5, cap=300.0) == 7.0
    assert retry.delay(3, 10_000, base=0.5, cap=300.0) == 300.0
    assert retry.delay(3, 10_000, base=0.5, cap=10.0, hint_cap=600.0) == 600.0
    assert retry.delay(3, -1.0, base=0.5, cap=10.0) == 0.0
    assert retry.delay(3, None, base=0.5, cap=10.0) == 2.0


def test_jittered_delays_are_spread_below_the_backoff():
    rng = random.Random(3)
    delays = [retry.delay(4, base=0.5, cap=10.0, jitter=True, rng=rng) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays) and len(set(delays)) > 100


class Busy(Exception):
    def __init__(self, hint: float | None = None) -> None:
        super().__init__("busy")
        self.hint = hint


async def test_after_first_counts_the_outside_failure_as_attempt_one_and_waits_after_it():
    waits: list[float] = []
    calls = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def call() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Busy(hint=5.0 if len(calls) == 2 else None)
        return "done"

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(Busy),
        stop=tenacity.stop_after_attempt(4),
        wait=retry.wait(0.1, 1.0, hint=lambda e: getattr(e, "hint", None)),
        sleep=sleep,
        reraise=True,
    )
    assert await retry.after_first(Busy(), call, retrying) == "done"
    assert len(calls) == 3  # attempts 2, 3 and 4: the first was the caller's own
    assert waits == [0.1, 0.2, 1.0]  # backoff after attempts 1 and 2, the hint (capped) after 3


async def test_after_first_gives_up_with_the_last_failure_when_tenacity_stops():
    async def call() -> None:
        raise Busy()

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(Busy),
        stop=tenacity.stop_after_attempt(2),
        wait=tenacity.wait_none(),
        reraise=True,
    )
    with pytest.raises(Busy):
        await retry.after_first(Busy(), call, retrying)


async def test_an_error_it_does_not_retry_escapes_at_once():
    async def call() -> None:
        raise KeyError("bug")

    retrying = tenacity.AsyncRetrying(retry=tenacity.retry_if_exception_type(Busy), reraise=True)
    with pytest.raises(KeyError):
        await retry.after_first(Busy(), call, retrying)
