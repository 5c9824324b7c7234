"""The segmentation service's part in privacy requests (mosaic.platform.privacy): a person's
segment memberships, exported or erased. Memberships are partitioned by profile on both
stores, so one statement per profile does it."""

from __future__ import annotations

from mosaic.events.v1 import privacy_request_pb2
from mosaic.platform.privacy import Answer
from segmentation_service.store import SegmentStore


def _profiles(request: privacy_request_pb2.PrivacyRequested) -> list[str]:
    return list(dict.fromkeys(p for p in [request.person_id, *request.profile_ids] if p))


class SegmentationPrivacy:
    def __init__(self, store: SegmentStore) -> None:
        self.db = store.db  # the same statements run on both backends

    async def _memberships(self, profile_id: str) -> list[dict]:
        rows = await self.db.execute(
            "SELECT segment_id, member, profile_version FROM segmentation_memberships WHERE profile_id = ?", (profile_id,))
        return [{"profile_id": profile_id, "segment_id": r[0], "member": bool(r[1]), "profile_version": r[2]} for r in rows]

    async def export(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        memberships = [m for p in _profiles(request) for m in await self._memberships(p)]
        return Answer({"memberships": len(memberships)}, {"memberships": memberships})

    async def erase(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        removed = 0
        for profile_id in _profiles(request):
            removed += len(await self._memberships(profile_id))
            await self.db.execute("DELETE FROM segmentation_memberships WHERE profile_id = ?", (profile_id,))
        return Answer({"segmentation_memberships": removed})
