"""The segmentation service's part in privacy requests (mosaic.platform.privacy): a person's
segment memberships, exported or erased: the membership rows, the segment member indexes, the
stored transitions, any transition still waiting to be published, a merge pointer and the
profile's due-time timers (found through their index by profile). The same statements run on
both backends (each names a full key or a key prefix). The erased profiles are remembered by a
digest (store.add_erased), so a late profile.updated does not bring one back on any replica."""

from __future__ import annotations

import time

from mosaic.events.v1 import privacy_request_pb2
from mosaic.platform.privacy import Answer
from mosaic.platform.topics import partition_of
from segmentation_service.columns import ColumnarView, erased_key
from segmentation_service.membership import erased_profiles as _profiles
from segmentation_service.store import SegmentStore


class SegmentationPrivacy:
    def __init__(self, store: SegmentStore, partitions: int, view: ColumnarView | None = None) -> None:
        self.store = store
        self.db = store.db  # the same statements run on both backends
        self.partitions = partitions
        self.view = view  # this replica's; the others' heard the request (Memberships.heard_privacy)

    async def _memberships(self, profile_id: str) -> list[dict]:
        rows = await self.db.execute(
            "SELECT segment_id, member, profile_version FROM segmentation_memberships WHERE profile_id = ?",
            (profile_id,),
        )
        return [
            {"profile_id": profile_id, "segment_id": r[0], "member": bool(r[1]), "profile_version": r[2]} for r in rows
        ]

    async def export(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        memberships = [m for p in _profiles(request) for m in await self._memberships(p)]
        return Answer({"memberships": len(memberships)}, {"memberships": memberships})

    async def erase(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        removed = {"segmentation_memberships": 0, "segmentation_transitions": 0, "segmentation_timers": 0}
        if self.view is not None:  # a redelivery after a missed notice, or the notice still to come
            self.view.erase(_profiles(request))
        for profile_id in _profiles(request):
            partition = partition_of(profile_id, self.partitions)
            # First, so a replica taking the partition over keeps the profile out even if this
            # erasure stops half-way (its redelivery finishes it).
            await self.store.add_erased(partition, [erased_key(profile_id)], time.time())
            memberships = await self._memberships(profile_id)
            removed["segmentation_memberships"] += len(memberships)
            for membership in memberships:
                await self.db.execute(
                    "DELETE FROM segmentation_members WHERE segment_id = ? AND partition = ? AND profile_id = ?",
                    (membership["segment_id"], partition, profile_id),
                )
            transitions = await self.db.execute(
                "SELECT segment_id FROM segmentation_transitions WHERE profile_id = ?", (profile_id,)
            )
            removed["segmentation_transitions"] += len(list(transitions))
            await self.db.execute("DELETE FROM segmentation_memberships WHERE profile_id = ?", (profile_id,))
            await self.db.execute("DELETE FROM segmentation_transitions WHERE profile_id = ?", (profile_id,))
            await self.db.execute(
                "DELETE FROM segmentation_pending WHERE partition = ? AND profile_id = ?", (partition, profile_id)
            )
            await self.db.execute(
                "DELETE FROM segmentation_merged WHERE partition = ? AND profile_id = ?", (partition, profile_id)
            )
            timers = await self.db.execute(
                "SELECT partition, bucket FROM segmentation_timer_index WHERE profile_id = ?", (profile_id,)
            )
            for timer_partition, bucket in timers:
                await self.db.execute(
                    "DELETE FROM segmentation_timers WHERE partition = ? AND bucket = ? AND profile_id = ?",
                    (timer_partition, bucket, profile_id),
                )
            removed["segmentation_timers"] += len(timers)
            await self.db.execute("DELETE FROM segmentation_timer_index WHERE profile_id = ?", (profile_id,))
        return Answer(removed)
