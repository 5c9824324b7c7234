"""Deciding memberships: on profile.updated, merges, splits, timers and backfills.

Every decision for a profile runs under that profile's lock, reads the profile's state from
the columnar view and evaluates it plainly (evaluate.py). A change of membership is recorded
with its transition and a pending row (store/base.py), then published on segment.membership under
the transition's message id, then the pending row is dropped: a redelivery finds the
membership already decided and only publishes what is still pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable

from google.protobuf import timestamp_pb2
from opentelemetry import trace

from mosaic.events.v1 import identity_changed_pb2, profile_updated_pb2, segment_membership_pb2
from mosaic.platform import metrics, topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.profile.v1 import profile_pb2
from segmentation_service import compiler
from segmentation_service.catalog import Live, SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.evaluate import evaluate
from segmentation_service.state import ProfileState
from segmentation_service.store import SegmentStore, Transition
from segmentation_service.timers import Timers

log = logging.getLogger("segmentation.membership")
Change = segment_membership_pb2.MembershipChange
Fetch = Callable[[str], Awaitable[profile_pb2.Profile | None]]


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

    def lock(self, profile_id: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(profile_id.encode()) % len(self._locks)]

    def partition(self, profile_id: str) -> int:
        return topics.partition_of(profile_id, self.bus.partitions)

    # profile.updated

    async def updated(self, update: profile_updated_pb2.ProfileUpdated, delivery: Delivery) -> None:
        async with self.lock(update.profile_id):
            state, replayed = await self._follow(update)
            alive = self.view.is_alive(update.profile_id)
            if not alive and not await self._merged(update.profile_id):
                self.view.set_alive(update.profile_id, True)  # split while we were not looking
                segments = list((await self.catalog.all()).values())
            else:
                keys = {key for c in update.changes if (key := compiler.read_key(c.path)) is not None}
                segments = await self.catalog.reading(keys)
            if self.view.is_alive(update.profile_id):
                await self._decide(state, segments, "v")
                await self._schedule(state)
            if replayed:
                await self._publish_pending(update.profile_id)

    async def _follow(self, update) -> tuple[ProfileState, bool]:
        """Move the view's row to the update's version; (state, whether it was a replay)."""
        state = self.view.get(update.profile_id)
        known = state.version if state is not None else 0
        if update.version <= known:
            assert state is not None  # versions start at 1: a replay has a row
            return state, True
        if update.version > known + 1 and self.fetch is not None:
            # A gap (the view was rebuilt from an older scan, or a message is still to come
            # on another path): read the profile itself rather than guess.
            profile = await self.fetch(update.profile_id)
            if profile is not None and profile.version >= update.version:
                state = ProfileState.of_profile(profile)
        if state is None or state.version < update.version:
            state = state or ProfileState(update.profile_id)
            state.apply(update)
        self.view.put(
            state, self.clock(), alive=self.view.is_alive(update.profile_id) or update.profile_id not in self.view
        )
        return state, False

    async def _schedule(self, state: ProfileState) -> None:
        if self.timers is not None:
            await self.timers.schedule(state, self.clock())

    async def _merged(self, profile_id: str) -> bool:
        return profile_id in await self.store.merged(self.partition(profile_id))

    async def _decide(self, state: ProfileState, segments: list[Live], kind: str) -> int:
        """Evaluate the segments for the profile; record and publish each change. Returns how many."""
        if not segments:
            return 0
        now = self.clock()
        current = await self.store.profile_memberships(state.profile_id)
        changed = 0
        for live in segments:
            self.evaluations += 1
            member = evaluate(live.compiled.expression, state, now, self.view.policy)
            was, decided = current.get(live.segment_id, (False, 0))
            if decided > state.version or member == was:
                continue  # a newer version decided already, or nothing changes
            transition = Transition(
                live.segment_id,
                state.profile_id,
                self.partition(state.profile_id),
                member,
                state.version,
                f"{kind}:{live.revision}:{state.version}",
            )
            await self._change(transition)
            changed += 1
        return changed

    async def _change(self, transition: Transition) -> None:
        """A new transition: recorded (with its pending row), counted once, then published. A
        replay publishes what is pending again without counting it twice."""
        await self.store.record(transition)
        metrics.segment_transition(transition.segment_id, "entered" if transition.entered else "left")
        await self._publish(transition)

    async def _publish(self, transition: Transition) -> None:
        trace.get_current_span().set_attribute("mosaic.segment.id", transition.segment_id)
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        change = segment_membership_pb2.SegmentMembershipChanged(
            segment_id=transition.segment_id,
            profile_id=transition.profile_id,
            change=Change.MEMBERSHIP_CHANGE_ENTERED if transition.entered else Change.MEMBERSHIP_CHANGE_EXITED,
            profile_version=transition.version,
            changed_at=now,
        )
        await self.bus.publish(topics.SEGMENT_MEMBERSHIP, transition.profile_id, change, transition.message_id)
        await self.store.published(transition)

    async def _publish_pending(self, profile_id: str) -> None:
        for transition in await self.store.pending(self.partition(profile_id), profile_id):
            await self._publish(transition)

    async def publish_all_pending(self, partitions) -> int:
        """At start: what a crash left recorded but unpublished."""
        count = 0
        for partition in partitions:
            for transition in await self.store.pending(partition):
                await self._publish(transition)
                count += 1
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
            transition = Transition(segment_id, profile_id, self.partition(profile_id), False, version, cause)
            await self._change(transition)
            return 1

    def heard_merge(self, merge: identity_changed_pb2.IdentityMerged) -> None:
        """Every replica hears every merge (Bus.listen): the merged profiles of its own view
        stop counting at once, wherever the survivor's partition is consumed."""
        for profile_id in merge.merged_profile_ids:
            self.view.set_alive(profile_id, False)

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
                await self._decide(state, segments, f"split:{split.split_id}")
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
