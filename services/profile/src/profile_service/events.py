"""The profile service's consumer of events.resolved: each event (or fetched batch) folded into its profile."""

from __future__ import annotations

from opentelemetry import trace

from mosaic.events.v1 import resolved_pb2
from mosaic.platform.bus import Delivery
from profile_service.profiles import Profiles


class ResolvedEventHandler:
    """events.resolved → fold → snapshot → profile.updated, idempotent by message id; a fetched
    batch at once (`batch`), or one event at a time when the bus falls back to that."""

    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles

    async def __call__(self, resolved: resolved_pb2.ResolvedEvent, delivery: Delivery) -> None:
        await self.batch([(resolved, delivery)])

    async def batch(self, items: list[tuple[resolved_pb2.ResolvedEvent, Delivery]]) -> None:
        contexts = [delivery.trace_context for _, delivery in items]
        snapshots = await self.profiles.apply_batch(
            [(resolved, context) for (resolved, _), context in zip(items, contexts, strict=False)]
        )
        for (resolved, _), context, snapshot in zip(items, contexts, snapshots, strict=False):
            if snapshot is not None:
                trace.get_current_span(context).set_attributes(
                    {"mosaic.profile.id": resolved.profile_id, "mosaic.profile.version": snapshot.version}
                )
