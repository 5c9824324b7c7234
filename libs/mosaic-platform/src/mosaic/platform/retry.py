"""Retry with backoff, one way everywhere.

The waits are computed here: `backoff` (exponential: base, 2·base, 4·base ... at most cap),
with full jitter when many callers would otherwise retry in step, and `delay`, which takes the
other side's hint (HTTP Retry-After, gRPC RetryInfo) when it sent one. The loops are
tenacity's: `wait` adapts these delays to it, and `after_first` carries a loop on from a first
failure raised outside tenacity, so a call that succeeds at once (the bus's handlers, identity's
resolutions) pays nothing for the retrying it did not need. A JetStream redelivery (a nak with
a delay) is a retry too; its delay comes from here as well.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")


def backoff(attempt: int, base: float, cap: float) -> float:
    """The wait after failed attempt `attempt` (from 1): base · 2^(attempt-1), at most `cap`."""
    return min(cap, base * 2 ** max(0, attempt - 1))


def delay(
    attempt: int,
    hint: float | None = None,
    *,
    base: float,
    cap: float,
    jitter: bool = False,
    rng: random.Random | None = None,
    hint_cap: float | None = None,
) -> float:
    """The wait after failed attempt `attempt`: the other side's `hint` when it sent one (at most
    `hint_cap`, `cap` unless given), else `backoff`, drawn uniformly below it with `jitter` (full jitter)."""
    if hint is not None:
        return min(cap if hint_cap is None else hint_cap, max(0.0, hint))
    ceiling = backoff(attempt, base, cap)
    return (rng or random).uniform(0, ceiling) if jitter else ceiling


def wait(
    base: float,
    cap: float,
    *,
    jitter: bool = False,
    hint: Callable[[BaseException], float | None] | None = None,
    hint_cap: float | None = None,
) -> Callable[[tenacity.RetryCallState], float]:
    """A tenacity `wait`: `delay` for the attempt that failed, with the hint `hint` reads from its error."""

    def wait_for(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        given = hint(error) if hint is not None and error is not None else None
        return delay(state.attempt_number, given, base=base, cap=cap, jitter=jitter, hint_cap=hint_cap)

    return wait_for


async def after_first(first: BaseException, call: Callable[[], Awaitable[T]], retrying: tenacity.AsyncRetrying) -> T:
    """Go on retrying `call` as `retrying` says, `first` being the failure of attempt 1 (made by
    the caller without tenacity): it is judged, waited after and counted as tenacity's own."""
    pending = [first]

    async def attempt() -> T:
        if pending:
            raise pending.pop()
        return await call()

    return await retrying(attempt)
