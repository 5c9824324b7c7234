"""Segments, memberships, transitions, merged profiles, backfill progress and timers.

Timers are kept by (partition, bucket): a bucket is a TIMER_BUCKET-second slice of time, and a
profile's timer sits in the first bucket that starts at or after its due time, so firing a
bucket once its start has passed never fires early. Each partition's cursor is the last bucket
fired, so a restart goes on from there. An index by profile names each timer's bucket, so an
erasure finds a person's timers without reading every bucket.

A membership is kept twice, by profile (`GetProfileSegments`, `IsMember`) and by segment in
one partition per bus partition (`ListMembers` never reads one unbounded partition), with the
profile version it was decided at: an older version is stale and changes nothing. Every entry
or exit is a transition, keyed by its cause (`v:<revision>:<version>` for a profile change,
`merge:<id>`, `time:<bucket>:...`, `backfill:<revision>:<version>`), written with the membership and a
pending row; the pending row is deleted once the transition is published, so a crash between
the two publishes it again (under the same message id) and never twice as a new transition.

The RFM model (the quintile edges scores are given by) is one row, written by the replica that
recomputes it and read by every catalog, so a restart scores as before it.

The erased profiles are kept by partition, as a digest of their id, for as long as a
profile.updated of theirs may still be in its stream: the replica that takes a partition reads
them before consuming it, so a late update does not bring an erased profile back.

The real-time path reads and writes once per fetched batch of profile.updated: `decisions` reads
every profile's memberships and pending transitions at once, `record` writes every transition
and timer the batch decided, `published` drops their pending rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mosaic.segmentation.v1 import segment_pb2
from segmentation_service.store.model import Decided, Timer, Transition


class SegmentStore(Protocol):
    db: Any  # the backend (Repository.db), for the privacy participant's erasure statements

    async def create(self, segment: segment_pb2.Segment) -> None:
        """Store a new segment; AlreadyExists when the id is taken."""

    async def replace(self, segment: segment_pb2.Segment) -> None:
        """Overwrite an existing segment; NotFound when there is none."""

    async def delete(self, segment_id: str) -> None: ...
    async def get(self, segment_id: str) -> segment_pb2.Segment | None: ...
    async def segments(self) -> list[segment_pb2.Segment]: ...
    async def page(self, after: str, size: int) -> list[segment_pb2.Segment]:
        """Up to `size` segments with ids after `after`, by id."""

    async def membership(self, segment_id: str, profile_id: str) -> tuple[bool, int]:
        """(member, profile version decided at); (False, 0) when never decided."""

    async def set_membership(self, segment_id: str, profile_id: str, member: bool, version: int) -> None:
        """Record a decision without a transition (a profile evaluated and left as it was)."""

    async def profile_memberships(self, profile_id: str) -> Decided: ...
    async def decisions(self, profiles: Mapping[str, int]) -> tuple[dict[str, Decided], list[Transition]]:
        """For profiles (id -> partition): each one's memberships (absent: none decided) and
        the transitions of theirs still pending, in one read."""

    async def record(self, transitions: Sequence[Transition], timers: Sequence[Timer] = ()) -> None:
        """Each transition with its membership, its by-segment row and its pending row, and the
        timers (as `add_timer`): on SQLite one transaction; on Cassandra each transition atomic
        (a logged batch), every timer's index row before its timer row."""

    async def pending(self, partition: int, profile_id: str | None = None) -> list[Transition]: ...
    async def published(self, transitions: Sequence[Transition]) -> None:
        """Drop the pending rows of transitions now published."""

    async def transitions(self, profile_id: str) -> list[Transition]: ...
    async def members(self, segment_id: str, partition: int) -> list[tuple[str, int]]: ...
    async def set_merged(self, partition: int, profile_id: str, survivor: str) -> None:
        """survivor "" clears it (a split)."""

    async def merged(self, partition: int) -> dict[str, str]: ...
    async def backfilled(self, segment_id: str, revision: int) -> set[int]: ...
    async def set_backfilled(self, segment_id: str, revision: int, partition: int) -> None: ...
    async def add_timer(self, partition: int, bucket: int, profile_id: str) -> None: ...
    async def timers(self, partition: int, bucket: int) -> list[str]: ...
    async def drop_timer(self, partition: int, bucket: int, profile_id: str) -> None: ...
    async def timer_cursor(self, partition: int) -> int | None:
        """The last bucket whose timers all fired; None before the first."""

    async def set_timer_cursor(self, partition: int, bucket: int) -> None: ...
    async def set_size(self, segment_id: str, day: str, partition: int, members: int) -> None: ...
    async def sizes(self, segment_id: str, since: str) -> dict[str, int]:
        """Members per day (`YYYY-MM-DD` >= since), summed over the partitions."""

    async def rfm_model(self) -> segment_pb2.RfmModel | None:
        """The RFM edges as last recomputed; None before the service first started."""

    async def set_rfm_model(self, model: segment_pb2.RfmModel) -> None: ...
    async def init_rfm_model(self, model: segment_pb2.RfmModel) -> None:
        """Store the model only if there is none (replicas starting at once never overwrite the
        edges one of them already recomputed)."""

    async def add_erased(self, partition: int, keys: Sequence[str], at: float) -> None:
        """Remember erased profiles of a partition (by columns.erased_key) from `at` (epoch s)."""

    async def erased(self, partition: int, since: float) -> list[str]:
        """The keys of the partition's profiles erased at or after `since`; older ones are dropped
        (no profile.updated of theirs can still come)."""

    async def close(self) -> None: ...
