"""Profiles, their history, the event archive and computed-trait definitions.

Per change: first the snapshot, keyed by version (rewriting a version is harmless), and its
time-index row; then, at once (a single-partition batch in Cassandra, a transaction in SQLite),
the applied-event marker (profile, message id) → version that makes a redelivered or
duplicated event a no-op, and the latest profile with its computed-trait partials. A crash
before that leaves an orphan snapshot that the next change of the profile overwrites; a marker
never exists without the state it marks, whatever order events are redelivered in.

The event path writes a batch of changes at once (`save_changes`): per profile, its archived
events, identifier index rows, snapshots and time rows first, grouped into one request per
partition, then all its markers with its last state in one single-partition batch; in SQLite
the whole batch is one transaction. Its reads are one per profile per batch too (`heads`).

Snapshots are partitioned by (profile_id, version // 1000) and the time index by
(profile_id, month), so no partition grows without bound however long a customer lives. The
archive is partitioned by (profile_id, day) and expires with a TTL.

An erasure leaves a tombstone per profile id (`profile_erasures`, a hash of the id): an event,
a consent notice or a merge for an erased profile that arrives afterwards (it was past
ingestion, or identity resolved it before its own part of the erasure) finds it and writes
nothing. It is read only where no head exists, i.e. for a profile about to be created.

A stored definition's backfill from the archive is recorded per partition of the bus once done
(`profile_backfills`: name, created_at, partition → the stream sequence of the last
profile.updated it published there), so a restart or a partition's next owner resumes with what
is left, and a reader knows which messages carry it. The records name the definition by its
creation too, so a name deleted and defined again is backfilled again, even past a record a
pass of the old one wrote late; deleting a definition deletes the records of its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, AsyncIterator, Protocol

from mosaic.events.v1 import resolved_pb2
from mosaic.profile.v1 import profile_pb2
from profile_service.store.model import Change, Latest, StoredSnapshot


class ProfileStore(Protocol):
    db: Any  # the backend (Repository.db), for the privacy participant's erasure statements

    async def latest(self, profile_id: str) -> Latest | None: ...
    async def set_merged_into(self, profile_id: str, survivor: str) -> None:
        """Point a merged-away profile at its survivor ("" undoes it, for a split)."""

    async def applied_version(self, profile_id: str, message_id: str) -> int | None: ...
    async def save(self, stored: StoredSnapshot, latest: Latest, marker_ttl: int | None = None) -> None:
        """Append the snapshot, mark its cause applied (for `marker_ttl` seconds, or for good),
        make `latest` the latest."""

    async def heads(self, wanted: dict[str, list[str]]) -> tuple[dict[str, Latest], dict[tuple[str, str], int]]:
        """For profile id → message ids: the latest of each profile that has one, and the
        applied version of each (profile, message id) that is marked applied."""

    async def save_changes(self, changes: list[Change], archive_ttl: int) -> None:
        """Write each change as `save` would its snapshots, with its archived events (kept
        `archive_ttl` seconds) and index rows first."""

    async def snapshots(self, profile_id: str, from_version: int, to_version: int) -> list[StoredSnapshot]:
        """Snapshots with from_version <= version <= to_version, oldest first."""

    async def list_snapshots(self, profile_id: str, below_version: int, limit: int) -> list[profile_pb2.Snapshot]:
        """Snapshots with version < below_version, newest first."""

    async def version_at(self, profile_id: str, at_us: int) -> int:
        """The last version recorded at or before `at_us`; 0 when none."""

    async def index_identifier(self, id_type: str, id_value: str, profile_id: str) -> None: ...
    async def profile_of(self, id_type: str, id_value: str) -> str | None: ...
    async def archive(self, profile_id: str, resolved: resolved_pb2.ResolvedEvent, name: str, ttl_seconds: int) -> None:
        """Keep an event with the identifiers it was resolved by (a split needs them)."""

    async def events(
        self, profile_id: str, since_us: int, until_us: int, limit: int
    ) -> list[resolved_pb2.ResolvedEvent]:
        """Archived events with since_us <= time < until_us, newest first."""

    async def record_erasure(self, profile_id: str) -> None:
        """Keep the tombstone of an erased profile (before its rows go)."""

    async def erased(self, profile_ids: list[str]) -> set[str]:
        """Those of `profile_ids` whose erasure is recorded (a tombstone the privacy participant
        writes with the erasure, kept for good), so nothing writes them back."""

    def scan(
        self, keep: Callable[[str], bool] | None = None, into: Callable[[], profile_pb2.Profile] = profile_pb2.Profile
    ) -> AsyncIterator[tuple[profile_pb2.Profile, str]]:
        """Every profile's latest state, with the survivor it was merged into ("" if none); with
        `keep`, only the profiles whose id it keeps (asked before their state is decoded). Each
        is decoded into the message `into()` gives: a response's own repeated field spares
        copying it there (half of a scan page's cost)."""

    async def create_definition(self, definition: profile_pb2.ComputedTraitDefinition) -> None: ...
    async def definitions(self) -> list[profile_pb2.ComputedTraitDefinition]: ...
    async def delete_definition(self, name: str) -> bool:
        """Delete a definition and its backfill records; whether the definition was there."""

    async def backfills(self, definition: profile_pb2.ComputedTraitDefinition) -> dict[int, int]:
        """The partitions whose backfill of the definition is done, each with the stream
        sequence of the last profile.updated that backfill published on it (0: none)."""

    async def set_backfilled(
        self, definition: profile_pb2.ComputedTraitDefinition, partition: int, sequence: int
    ) -> None:
        """Record a partition's backfill of the definition done (see `backfills`)."""

    async def close(self) -> None: ...
