"""The segment definitions, compiled, with the index of what each one reads."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import cached_property

from mosaic.profile.v1 import profile_service_pb2
from mosaic.segmentation.v1 import segment_pb2
from segmentation_service import compiler, series
from segmentation_service.evaluate import Due, Predicate, due_function, predicate
from segmentation_service.rfm import DEFAULT_TRAITS, RfmModel, RfmTraits
from segmentation_service.store import SegmentStore


@dataclass(frozen=True)
class Live:
    """One segment as the evaluators use it."""

    segment: segment_pb2.Segment
    compiled: compiler.Compiled
    matches: Predicate  # the plain evaluator of compiled.expression, built once
    due: Due  # its next_due, built once

    @property
    def segment_id(self) -> str:
        return self.segment.segment_id

    @property
    def revision(self) -> int:
        return self.segment.revision

    @property
    def tag(self) -> str:
        """The revision in transitions' causes: with the RFM edges' generation for a segment that
        reads scores, since new edges decide it anew (`3.rfm2`)."""
        generation = self.compiled.rfm_generation
        return str(self.revision) if generation is None else f"{self.revision}.rfm{generation}"

    @cached_property
    def series(self) -> list[profile_service_pb2.DefineEventSeriesRequest]:
        """The event series it reads, as the profile service is asked to keep them."""
        return series.needed(self.compiled.expression)

    @property
    def backfill_revision(self) -> int:
        """What a backfill is done for: the revision, and new RFM edges make a new one."""
        generation = self.compiled.rfm_generation
        return self.revision if generation is None else (generation + 1) << 32 | self.revision


class SegmentCatalog:
    """The compiled segments; reloaded after `max_age` so other replicas' changes show."""

    def __init__(self, store: SegmentStore, max_age: float = 5.0, traits: RfmTraits = DEFAULT_TRAITS) -> None:
        self.store = store
        self.max_age = max_age
        self.traits = traits
        self.rfm = RfmModel(traits)  # the edges RFM conditions are compiled with
        self._segments: dict[str, Live] = {}
        self._by_read: dict[str, list[Live]] = {}
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()

    async def all(self) -> dict[str, Live]:
        async with self._lock:
            if time.monotonic() - self._loaded_at > self.max_age:
                stored = await self.store.rfm_model()
                self.rfm = RfmModel(self.traits) if stored is None else RfmModel.of_proto(stored, self.traits)
                self._load(await self.store.segments())
            return self._segments

    def _load(self, segments: list[segment_pb2.Segment]) -> None:
        for segment in segments:
            if not segment.HasField("expression"):
                # Stored before the segment language: its trait condition is the definition.
                text, expression = compiler.definition_of(segment)
                segment.definition = text
                segment.expression.CopyFrom(expression)
        stored = {s.segment_id: s for s in segments}
        compiled = compiler.compile_all({k: compiler.tied(s) for k, s in stored.items()}, self.rfm)
        self._segments = {
            k: Live(stored[k], compiled[k], predicate(compiled[k].expression), due_function(compiled[k].expression))
            for k in sorted(stored)
        }
        self._by_read = {}
        for live in self._segments.values():
            for key in live.compiled.reads:
                self._by_read.setdefault(key, []).append(live)
        self._loaded_at = time.monotonic()

    def reading(self, keys: set[str]) -> list[Live]:
        """The segments that read any of `keys` (dependency keys of changes), by id, as `all`
        last loaded them (a batch of updates loads them once)."""
        found = {live.segment_id: live for key in keys for live in self._by_read.get(key, ())}
        return [found[k] for k in sorted(found)]

    def invalidate(self) -> None:
        self._loaded_at = -1e9

    async def compile(self, segment_id: str, expression: segment_pb2.Expression) -> compiler.Compiled:
        """Compile a definition (a segment's `compiler.tied` expression) against the stored ones
        (a new or changed segment, an estimate)."""
        definitions = {k: compiler.tied(live.segment) for k, live in (await self.all()).items()}
        definitions[segment_id] = expression
        return compiler.compile_all(definitions, self.rfm)[segment_id]

    async def referrers(self, segment_id: str) -> list[str]:
        return [
            k for k, live in (await self.all()).items() if segment_id in live.compiled.refers_to and k != segment_id
        ]
