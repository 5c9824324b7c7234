"""Deciding memberships: on profile.updated, merges, splits, timers and backfills.

Every decision for a profile runs under that profile's lock, reads the profile's state from
the columnar view and evaluates it plainly (evaluate.py). A change of membership is recorded
with its transition and a pending row (store/base.py), then published on segment.membership under
the transition's message id, then the pending row is dropped: a redelivery finds the
membership already decided and only publishes what is still pending.

profile.updated comes a fetched batch at a time (`updated_batch`): under the locks of all its
profiles, one read of their memberships and pending transitions; each profile's updates followed
in order on a copy of its state, each version decided against what the versions before it
decided; then one write of every transition and timer, the view moved, and one publish (what was
pending first). A batch that fails leaves the view as it was, so the consumer's fallback, one
message at a time through `updated`, starts where the batch did.

A segment the backfiller holds (`held`: a revision reading event series, until its backfill on
the partition is done, which waits for the profile service's backfill of the series) is decided
by nothing else on that partition until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2
from opentelemetry import trace
from opentelemetry.context import Context

from mosaic.consent.v1 import privacy_pb2
from mosaic.events.v1 import identity_changed_pb2, privacy_request_pb2, profile_updated_pb2, segment_membership_pb2
from mosaic.platform import metrics, topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2
from segmentation_service import compiler
from segmentation_service.catalog import Live, SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.state import ProfileState
from segmentation_service.store import Decided, SegmentStore, Timer, Transition
from segmentation_service.timers import Timers, timed

log = logging.getLogger("segmentation.membership")
# Plain ints: an enum wrapper's attribute lookup is slow on the per-transition path.
ENTERED = segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED
EXITED = segment_membership_pb2.MEMBERSHIP_CHANGE_EXITED
Fetch = Callable[[str], Awaitable[profile_pb2.Profile | None]]
Update = tuple[profile_updated_pb2.ProfileUpdated, Delivery]
Publish = tuple[Transition, Context | None]  # a transition and the trace of what caused it


@dataclass
class Followed:
    """One profile of a batch of updates, as the batch moves it."""

    state: ProfileState | None  # its state (a copy of the view's row until the batch is stored)
    decided: Decided  # its memberships, with what this batch decided so far
    moved: bool = False  # followed to a newer version: the view's row is replaced
    revived: bool = False  # split while this replica was not looking: alive again
    merged: bool | None = None  # merged away (asked of the store once, for a row not alive)
    evaluated: bool = False
    bucket: int | None = None  # its next timer, stored with the batch
    context: Context | None = None  # the trace of its last update, for what was pending
    transitions: list[Publish] = field(default_factory=list)


def erased_profiles(request: privacy_request_pb2.PrivacyRequested) -> list[str]:
    """The profiles a privacy request names: the person's and the profiles merged into it."""
    return list(dict.fromkeys(p for p in [request.person_id, *request.profile_ids] if p))


class Memberships:
    def __init__(
        self,
        store: SegmentStore,
        catalog: SegmentCatalog,
        view: ColumnarView,
        bus: Bus,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.time,
        timers: Timers | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.view = view
        self.bus = bus
        self.fetch = fetch
        self.clock = clock
        self.timers = timers
        if timers is not None:
            timers.memberships = self
        self._locks = [asyncio.Lock() for _ in range(256)]
        self._notices: set[asyncio.Task] = set()
        self.evaluations = 0
        # partition -> the stream sequence its profile.updated is handled through: by the batches
        # handled whole (a consumer handles one batch at a time, in stream order), and by rebuilds.
        self.handled: dict[int, int] = {}
        self.held: Callable[[Live, int], bool] = lambda live, partition: False  # set by the Backfiller

    def deciding(self, segments: Iterable[Live], partition: int) -> list[Live]:
        """The segments that may be decided on a partition now: not those the backfiller holds."""
        return [live for live in segments if not self.held(live, partition)]

    def _lock_index(self, profile_id: str) -> int:
        return zlib.crc32(profile_id.encode()) % len(self._locks)

    def lock(self, profile_id: str) -> asyncio.Lock:
        return self._locks[self._lock_index(profile_id)]

    @contextlib.asynccontextmanager
    async def _locked(self, profile_ids: Iterable[str]) -> AsyncIterator[None]:
        """The locks of several profiles, taken in the pool's order, so two batches never wait
        on each other (everyone else takes one lock at a time)."""
        async with contextlib.AsyncExitStack() as stack:
            for index in sorted({self._lock_index(profile_id) for profile_id in profile_ids}):
                await stack.enter_async_context(self._locks[index])
            yield

    def partition(self, profile_id: str) -> int:
        return topics.partition_of(profile_id, self.bus.partitions)

    # profile.updated

    async def updated(self, update: profile_updated_pb2.ProfileUpdated, delivery: Delivery) -> None:
        """One profile.updated: the consumer's fallback when a batch failed (messages of other
        keys may be handled side by side, so `handled` waits for the next whole batch)."""
        await self._updated([(update, delivery)])

    async def updated_batch(self, items: list[Update]) -> None:
        """A fetched batch of profile.updated, in stream order; the same outcome as `updated` on
        each in turn."""
        await self._updated(items)
        if items:
            partition = items[-1][1].partition
            self.handled[partition] = max(self.handled.get(partition, 0), items[-1][1].stream_sequence)

    async def _updated(self, items: list[Update]) -> None:
        by_profile: dict[str, list[Update]] = {}
        for update, delivery in items:
            if not update.profile_id:
                raise InvalidArgument("profile_id", "is required")
            if update.version < 1:
                raise InvalidArgument("version", "must be at least 1 (versions start at 1)")
            if not self.view.is_erased(update.profile_id):  # a late update of an erased profile: dropped
                by_profile.setdefault(update.profile_id, []).append((update, delivery))
        if not by_profile:
            return
        async with self._locked(by_profile):
            segments = await self.catalog.all()
            decided, pending = await self.store.decisions({pid: self.partition(pid) for pid in by_profile})
            now = self.clock()
            followed: dict[str, Followed] = {}
            for profile_id, updates in by_profile.items():
                entry = followed[profile_id] = Followed(self.view.get(profile_id), decided.get(profile_id, {}))
                for update, delivery in updates:
                    await self._follow(entry, update)
                    entry.context = delivery.trace_context
                    live = await self._reading(entry, update, segments)
                    if live is not None:
                        live = self.deciding(live, delivery.partition)
                        assert entry.state is not None  # followed, or a replay of a row the view has
                        found = self._evaluate(entry.state, live, "v", entry.decided, now)
                        entry.transitions.extend((t, delivery.trace_context) for t in found)
                        entry.evaluated = True
                if entry.evaluated and self.timers is not None:
                    assert entry.state is not None
                    entry.bucket = self.timers.bucket(entry.state, now, timed(segments))
            transitions = [item for entry in followed.values() for item in entry.transitions]
            timers: list[Timer] = [
                (self.partition(pid), entry.bucket, pid) for pid, entry in followed.items() if entry.bucket is not None
            ]
            await self.store.record([t for t, _ in transitions], timers)
            for profile_id, entry in followed.items():
                if entry.moved:
                    assert entry.state is not None
                    self.view.put(entry.state, now, alive=self._alive(entry))
                elif entry.revived:
                    self.view.set_alive(profile_id, True)
                if entry.bucket is not None:
                    self.view.set_scheduled(profile_id, entry.bucket)
            for transition, _ in transitions:
                self._count(transition)
            # What an earlier attempt recorded but did not publish goes first, under the trace of
            # the profile's update that found it.
            await self._publish([(t, followed[t.profile_id].context) for t in pending] + transitions)

    async def _follow(self, entry: Followed, update: profile_updated_pb2.ProfileUpdated) -> None:
        """Move the profile's state to the update's version; a replay leaves it."""
        state = entry.state
        known = state.version if state is not None else 0
        if update.version <= known:
            return
        if update.version > known + 1 and self.fetch is not None:
            # A gap (the view was rebuilt from an older scan, or a message is still to come
            # on another path): read the profile itself rather than guess.
            profile = await self.fetch(update.profile_id)
            if profile is not None and profile.version >= update.version:
                state = ProfileState.of_profile(profile)
        if state is None or state.version < update.version:
            state = state or ProfileState(update.profile_id)
            state.apply(update)
        entry.state, entry.moved = state, True

    def _alive(self, entry: Followed) -> bool:
        """Whether the profile counts: a new row does; a merged one does not until a split
        (read from the view each time: a merge heard meanwhile counts at once)."""
        assert entry.state is not None
        profile_id = entry.state.profile_id
        return entry.revived or profile_id not in self.view or self.view.is_alive(profile_id)

    async def _reading(
        self, entry: Followed, update: profile_updated_pb2.ProfileUpdated, segments: dict[str, Live]
    ) -> list[Live] | None:
        """The segments to decide after an update: those reading what it changed, every one for
        a row a split revived unseen, none for a profile merged away."""
        if not self._alive(entry):
            if entry.merged is None:
                entry.merged = await self._merged(update.profile_id)
            if entry.merged:
                return None
            entry.revived = True  # split while we were not looking
            return list(segments.values())
        return self.catalog.reading({key for c in update.changes if (key := compiler.read_key(c.path)) is not None})

    async def _schedule(self, state: ProfileState) -> None:
        if self.timers is not None:
            await self.timers.schedule(state, self.clock())

    async def _merged(self, profile_id: str) -> bool:
        return profile_id in await self.store.merged(self.partition(profile_id))

    def _evaluate(
        self, state: ProfileState, segments: list[Live], kind: str, decided: Decided, now: float
    ) -> list[Transition]:
        """The profile's transitions in these segments, each noted in `decided`; no I/O."""
        transitions = []
        for live in segments:
            self.evaluations += 1
            member = live.matches(state, now, self.view.policy)
            was, version = decided.get(live.segment_id, (False, 0))
            if version > state.version or member == was:
                continue  # a newer version decided already, or nothing changes
            decided[live.segment_id] = (member, state.version)
            transitions.append(
                Transition(
                    live.segment_id,
                    state.profile_id,
                    self.partition(state.profile_id),
                    member,
                    state.version,
                    f"{kind}:{live.tag}:{state.version}",
                )
            )
        return transitions

    async def _decide(self, state: ProfileState, segments: list[Live], kind: str) -> int:
        """Evaluate the segments for the profile; record and publish each change. Returns how many."""
        if not segments:
            return 0
        decided = await self.store.profile_memberships(state.profile_id)
        transitions = self._evaluate(state, segments, kind, decided, self.clock())
        await self._change(transitions)
        return len(transitions)

    async def _change(self, transitions: list[Transition]) -> None:
        """New transitions: recorded (with their pending rows), counted once, then published. A
        replay publishes what is pending again without counting it twice."""
        await self.store.record(transitions)
        for transition in transitions:
            self._count(transition)
        await self._publish([(t, None) for t in transitions])

    @staticmethod
    def _count(transition: Transition) -> None:
        metrics.segment_transition(transition.segment_id, "entered" if transition.entered else "left")

    async def _publish(self, items: list[Publish]) -> None:
        """Publish transitions at once, each under its cause's trace (None: the current one),
        then drop their pending rows."""
        if not items:
            return
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        messages = []
        for transition, context in items:
            trace.get_current_span(context).set_attribute("mosaic.segment.id", transition.segment_id)
            change = segment_membership_pb2.SegmentMembershipChanged(
                segment_id=transition.segment_id,
                profile_id=transition.profile_id,
                change=ENTERED if transition.entered else EXITED,
                profile_version=transition.version,
                changed_at=now,
            )
            messages.append((transition.profile_id, change.SerializeToString(), transition.message_id))
        contexts = [context for _, context in items]
        await self.bus.publish_many(topics.SEGMENT_MEMBERSHIP, messages, contexts=contexts if any(contexts) else None)
        await self.store.published([t for t, _ in items])

    async def _publish_pending(self, profile_id: str) -> None:
        await self._publish([(t, None) for t in await self.store.pending(self.partition(profile_id), profile_id)])

    async def publish_all_pending(self, partitions) -> int:
        """At start: what a crash left recorded but unpublished."""
        count = 0
        for partition in partitions:
            pending = await self.store.pending(partition)
            await self._publish([(t, None) for t in pending])
            count += len(pending)
        return count

    # identity.merged and identity.split

    async def merged(self, merge: identity_changed_pb2.IdentityMerged, delivery: Delivery) -> None:
        """The merged profiles leave every segment; the survivor's own profile.updated (the
        profile service folds them into it) decides what it enters."""
        for profile_id in merge.merged_profile_ids:
            async with self.lock(profile_id):
                await self.store.set_merged(self.partition(profile_id), profile_id, merge.survivor_profile_id)
                self.view.set_alive(profile_id, False)
            for segment_id in sorted(await self.store.profile_memberships(profile_id)):
                await self.leave(profile_id, segment_id, f"merge:{merge.merge_id}")
            async with self.lock(profile_id):
                await self._publish_pending(profile_id)

    async def leave(self, profile_id: str, segment_id: str, cause: str) -> int:
        """The profile exits the segment if it is in it (a merge, a deleted segment)."""
        async with self.lock(profile_id):
            member, version = await self.store.membership(segment_id, profile_id)
            if not member:
                return 0
            await self._change([Transition(segment_id, profile_id, self.partition(profile_id), False, version, cause)])
            return 1

    def heard_merge(self, merge: identity_changed_pb2.IdentityMerged) -> None:
        """Every replica hears every merge (Bus.listen): the merged profiles of its own view
        stop counting at once, wherever the survivor's partition is consumed."""
        for profile_id in merge.merged_profile_ids:
            self.view.set_alive(profile_id, False)

    def heard_privacy(self, request: privacy_request_pb2.PrivacyRequested) -> None:
        """Every replica hears every privacy request (Bus.listen): an erasure's profiles leave the
        view of whichever replica holds them at once, so Estimate no longer counts or samples them
        (the replica consuming the request's partition erases the stored rows)."""
        if request.kind == privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE:
            self.view.erase(erased_profiles(request))

    def heard_split(self, split: identity_changed_pb2.IdentitySplit) -> None:
        """And every split: the restored profiles of its own view are evaluated again here."""
        if any(pid in self.view for pid in (*split.restored_profile_ids, split.survivor_profile_id)):
            task = asyncio.create_task(self.split(split, None))
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)

    async def split(self, split: identity_changed_pb2.IdentitySplit, delivery: Delivery | None) -> None:
        """Both sides are evaluated against every segment again."""
        segments = list((await self.catalog.all()).values())
        for profile_id in (*split.restored_profile_ids, split.survivor_profile_id):
            async with self.lock(profile_id):
                await self.store.set_merged(self.partition(profile_id), profile_id, "")
                state = self.view.get(profile_id)
                if state is None:
                    continue  # not seen yet: its profile.updated will evaluate it
                self.view.set_alive(profile_id, True)
                deciding = self.deciding(segments, self.partition(profile_id))
                await self._decide(state, deciding, f"split:{split.split_id}")
                await self._schedule(state)
                await self._publish_pending(profile_id)

    # Re-evaluation without a profile change (backfills, timers).

    async def reevaluate(self, profile_id: str, segments: list[Live], kind: str) -> int:
        async with self.lock(profile_id):
            state = self.view.get(profile_id)
            if state is None or not self.view.is_alive(profile_id):
                state = ProfileState(profile_id, state.version if state else 0)  # gone: leaves everything
                return await self._decide(state, segments, kind)
            changed = await self._decide(state, segments, kind)
            await self._schedule(state)
            return changed
