"""Per-source rate limits: a token bucket of events, per ingestion replica.

A request of n events is let in while the bucket holds at least one token and then takes all
n, possibly going into debt: a batch larger than the burst is never refused for ever, and the
debt holds the next requests back until the rate has paid it off, so the long-run rate holds.
Each replica enforces its share of the source's limit: the rate over the ingestion replicas
alive (the members of mosaic.platform.ownership), re-sized as they come and go.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from mosaic.platform.errors import DomainError


class RateLimited(DomainError):
    """A source sent faster than its limit; RESOURCE_EXHAUSTED with a RetryInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, source_id: str, retry_after: float) -> None:
        super().__init__(f"source {source_id!r} is over its rate limit; retry in {retry_after:.1f}s")
        self.retry_after = retry_after

    def details(self) -> list:
        seconds = int(self.retry_after)
        delay = duration_pb2.Duration(seconds=seconds, nanos=int((self.retry_after - seconds) * 1e9))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    at: float


class RateLimiter:
    """One token bucket per source, created on first use, re-sized when the source's limit changes.

    Open sources let callers name any id, each with a bucket of its own: once there are
    `prune_above` buckets, those that have filled up again (the same as new ones) are dropped.
    """

    def __init__(
        self, share: float = 1.0, clock: Callable[[], float] = time.monotonic, prune_above: int = 10_000
    ) -> None:
        self.share = share
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._prune_above = self._min_prune = prune_above

    def __len__(self) -> int:
        return len(self._buckets)

    def shared_by(self, replicas: Collection[str]) -> None:
        """The replicas alive now, each letting in its part of every source's rate."""
        self.share = 1 / max(1, len(replicas))

    def admit(self, source_id: str, events: int, rate: float, burst: int) -> None:
        """Take `events` tokens, or raise RateLimited with the time until one is back."""
        if rate <= 0 or events <= 0:
            return
        rate *= self.share
        capacity = float(burst) * self.share if burst else rate
        capacity = max(capacity, 1.0)
        now = self._clock()
        bucket = self._buckets.get(source_id)
        if bucket is None or bucket.rate != rate or bucket.burst != capacity:
            if len(self._buckets) >= self._prune_above:
                self._drop_full(now)
            bucket = self._buckets[source_id] = _Bucket(rate, capacity, capacity, now)
        bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            raise RateLimited(source_id, max(0.001, (1.0 - bucket.tokens) / rate))
        bucket.tokens -= events

    def _drop_full(self, now: float) -> None:
        self._buckets = {
            source_id: bucket
            for source_id, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.at) * bucket.rate < bucket.burst
        }
        # Pruned again only once the map has doubled: amortised O(1) per new bucket.
        self._prune_above = max(self._min_prune, 2 * len(self._buckets))


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds; never 0, which clients read as "now"."""
    return str(max(1, math.ceil(seconds)))
