"""The path every event takes after its envelope is valid, whichever door it came in by.

For a batch from one source: drop the events of suppressed people, drop or strip what the
person's consent forbids (consent.py), run the source's transforms and tracking plan (which
may block or quarantine), then store the rest in
JetStream in one go and the quarantined events in the store. Only when both are confirmed
does the caller hear back; if either is not, the whole call fails with `Unavailable` and the
client retries, which is safe because the same message id from the same source is stored
once (JetStream's duplicate window) and quarantined once (keyed by message id).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2
from opentelemetry import trace

from ingestion_service import envelope
from ingestion_service.backlog import BacklogGauge
from ingestion_service.config import Settings
from ingestion_service.consent import ConsentGate
from ingestion_service.ratelimit import RateLimited, RateLimiter
from ingestion_service.sources import ActiveSource, SourceDirectory, check_source_id
from ingestion_service.store import IngestionStore
from ingestion_service.suppression import SuppressionList
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2, quarantine_pb2, source_pb2
from mosaic.platform import metrics, topics
from mosaic.platform.bus import Bus
from mosaic.platform.errors import FailedPrecondition, NotFound, Unavailable

# Module-level ints: the enum wrapper's attribute lookup is slow on a hot path.
S = ingestion_service_pb2
EventResult = ingestion_service_pb2.EventResult


@dataclass
class Tally:
    """How many events ended how: the answer of IngestStream, and what the HTTP API counts."""

    counts: dict[int, int] = field(default_factory=dict)

    def add(self, results: list[EventResult]) -> None:
        for result in results:
            self.counts[result.status] = self.counts.get(result.status, 0) + 1

    def __getitem__(self, status: int) -> int:
        return self.counts.get(status, 0)


class Intake:
    """Suppression, governance and storage of a source's events."""

    def __init__(
        self,
        bus: Bus,
        store: IngestionStore,
        sources: SourceDirectory,
        suppression: SuppressionList,
        limiter: RateLimiter,
        settings: Settings,
        backlog: BacklogGauge | None = None,
        consent: ConsentGate | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.sources = sources
        self.suppression = suppression
        self.limiter = limiter
        self.settings = settings
        self.backlog = backlog
        self.consent = consent

    async def source(self, source_id: str) -> ActiveSource:
        """The source a gRPC caller names; NOT_FOUND or FAILED_PRECONDITION when it may not send."""
        check_source_id(source_id)
        active = await self.sources.by_id(source_id)
        if active is None:
            if not self.settings.open_sources:
                raise NotFound("source", source_id)
            active = self.sources.open_source(source_id)
        if active.source.disabled:
            raise FailedPrecondition(f"source {source_id}", "is disabled")
        return active

    def admit(self, active: ActiveSource, events: int) -> None:
        """Take the batch from the source's rate limit, or raise RateLimited; Unavailable while
        the pipeline is too far behind."""
        try:
            if self.backlog is not None:
                self.backlog.check()
            self.limiter.admit(active.source_id, events, active.rate, active.burst)
        except (Unavailable, RateLimited) as error:
            # Senders told to come back: what backpressure and the rate limits hold off, counted.
            metrics.ingested(active.source_id, "refused" if isinstance(error, Unavailable) else "rate_limited", events)
            raise

    async def ingest(self, active: ActiveSource, events: list[event_pb2.Event]) -> list[EventResult]:
        """Events whose envelope is valid (see envelope.prepare) → one result each, in order."""
        results: list[EventResult] = []
        publish: list[tuple[int, event_pb2.Event]] = []
        keep: list[quarantine_pb2.QuarantinedEvent] = []
        governor = active.governor
        gate = self.consent if self.consent is not None and self.consent.active else None
        known = await gate.lookup(events) if gate is not None else {}
        for event in events:
            result = EventResult(message_id=event.message_id)
            results.append(result)
            if self.suppression.matches(event):
                result.status = S.EVENT_STATUS_SUPPRESSED
                continue
            if gate is not None and (reason := gate.apply(event, known)) is not None:
                result.status, result.reason = S.EVENT_STATUS_SUPPRESSED, reason
                continue
            if governor.active:
                received = event_pb2.Event()
                received.CopyFrom(event)
                verdict = governor.decide(event)
                if verdict is not None:
                    result.field, result.reason = verdict.field, verdict.reason
                    if verdict.action == source_pb2.PLAN_ACTION_BLOCK:
                        result.status = S.EVENT_STATUS_REJECTED
                    else:
                        result.status = S.EVENT_STATUS_QUARANTINED
                        keep.append(
                            quarantine_pb2.QuarantinedEvent(
                                source_id=active.source_id,
                                event=received,
                                field=verdict.field,
                                reason=verdict.reason,
                                quarantined_at=_now(),
                            )
                        )
                    continue
            publish.append((len(results) - 1, event))
        span = trace.get_current_span()
        span.set_attributes({"mosaic.source.id": active.source_id, "mosaic.ingest.batch_size": len(events)})
        try:
            await asyncio.gather(self._publish(publish, results), self._quarantine(keep))
        except Unavailable:  # NATS away or a stream full: the sender hears 503 and retries
            metrics.ingested(active.source_id, "refused", len(events))
            raise
        metrics.ingested_statuses(active.source_id, S.EventStatus.Name, (result.status for result in results))
        return results

    async def _publish(self, publish: list[tuple[int, event_pb2.Event]], results: list[EventResult]) -> None:
        if not publish:
            return
        duplicates = await self.bus.publish_many(
            topics.EVENTS_RAW,
            [
                (envelope.partition_key(event), event.SerializeToString(), envelope.dedupe_id(event))
                for _, event in publish
            ],
        )
        for (index, _), duplicate in zip(publish, duplicates, strict=False):
            results[index].status = S.EVENT_STATUS_DUPLICATE if duplicate else S.EVENT_STATUS_ACCEPTED

    async def _quarantine(self, keep: list[quarantine_pb2.QuarantinedEvent]) -> None:
        for kept in keep:
            people = self.suppression.people(kept.event)
            await self.store.put_quarantined(kept, self.settings.quarantine_days, people)
            # An erasure that came in while this was stored may have looked before it was there.
            if suppressed := self.suppression.suppressed(people):
                await self.suppression.erase_quarantined(suppressed)


def _now() -> timestamp_pb2.Timestamp:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return now
