"""The delivery service's part in privacy requests (mosaic.platform.privacy): a person's
deliveries, exported or erased. The delivery log is partitioned by profile on both stores, so
`erase_person` deletes a profile's log and its dead letters on either. What was already sent to a destination is the
destination's to erase; the export lists where it went.

An erasure first leaves a tombstone per profile id, which the planner reads before planning: a
trigger for the person read after it (an event resolved, or a membership changed, before the
services upstream did their part) plans nothing, records nothing and sends nothing. Neither
the profile service (only asked for traits a template or quiet hours need; NOT_FOUND is no
traits) nor consent (its ledger erased, the jurisdiction's default answers) would stop it."""

from __future__ import annotations

from google.protobuf import json_format

from delivery_service.store import DeliveryStore
from mosaic.events.v1 import privacy_request_pb2
from mosaic.platform.privacy import Answer


def _profiles(request: privacy_request_pb2.PrivacyRequested) -> list[str]:
    return list(dict.fromkeys(p for p in [request.person_id, *request.profile_ids] if p))


class DeliveryPrivacy:
    def __init__(self, store: DeliveryStore) -> None:
        self.store = store

    async def export(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        deliveries = [
            json_format.MessageToDict(d, preserving_proto_field_name=True)
            for p in _profiles(request)
            for d in await self.store.deliveries(p)
        ]
        return Answer({"deliveries": len(deliveries)}, {"deliveries": deliveries})

    async def erase(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        removed = 0
        for profile_id in _profiles(request):
            await self.store.record_erasure(profile_id)  # first: nothing is planned for them after it
            removed += await self.store.erase_person(profile_id)  # the delivery log and dead letters
        return Answer({"delivery_log": removed})
