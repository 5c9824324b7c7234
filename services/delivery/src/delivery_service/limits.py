"""Per-destination protections: a rate limit, a circuit breaker and the retry schedule.

Pure logic on a clock passed in, so the rules are tested without waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from mosaic.platform import retry

Clock = Callable[[], float]


class TokenBucket:
    """At most `rate` starts a second on average, bursts up to `burst`; rate 0 means no limit."""

    def __init__(self, rate: float, burst: float | None = None, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()

    def wait_time(self) -> float:
        """Take one token; the seconds to wait before using it (0 when one was there)."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def ready(self) -> tuple[int, float]:
        """Without taking any: how many tokens are there now, and, when none, the seconds until
        one is (rate 0: as many as wanted, now)."""
        if self.rate <= 0:
            return 1 << 30, 0.0
        self._refill()
        if self.tokens >= 1:
            return int(self.tokens), 0.0
        return 0, (1 - self.tokens) / self.rate

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class CircuitBreaker:
    """Opens after `threshold` failures in a row; while open nothing is sent (jobs wait in the
    queue, untouched, so they spend none of their retry budget); after `cooldown` seconds one
    probe is let through (half-open): its success closes the circuit, its failure reopens it
    for twice as long, up to `max_cooldown`."""

    def __init__(
        self, threshold: int = 5, cooldown: float = 2.0, max_cooldown: float = 60.0, clock: Clock = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        """Whether a send may start now (in half-open, only the one probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until the circuit half-opens (0 when a send may start)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - self.clock())

    def abandon_probe(self) -> None:
        """A probe is over: if it gave no verdict (nothing was sent: no jobs, or none left to
        send), the next send may probe instead; left probing, the circuit would never let
        anything through again. After a verdict (`succeeded`, `failed`) nothing is left to do."""
        self.probing = False

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False
        self.cooldown = self.base_cooldown

    def failed(self) -> None:
        if self.probing:
            self.probing = False
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self.opened_at = self.clock()
            return
        self.failures += 1
        if self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = self.clock()


def retry_delay(
    attempt: int,
    retry_after: float | None = None,
    base: float = 0.5,
    cap: float = 300.0,
    rng: random.Random | None = None,
) -> float:
    """The wait before attempt `attempt + 1`: the destination's Retry-After when it sent one
    (capped), else exponential backoff with full jitter (uniform in 0 .. base * 2^(attempt-1)),
    so the jobs of a destination that failed together do not come back together."""
    return retry.delay(attempt, retry_after, base=base, cap=cap, jitter=True, rng=rng)
