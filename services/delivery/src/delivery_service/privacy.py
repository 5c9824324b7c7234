"""The delivery service's part in privacy requests (mosaic.platform.privacy): a person's
deliveries, exported or erased. The delivery log is partitioned by profile on both stores, so
`erase_person` deletes a profile's log and its dead letters on either. What was already sent to a destination is the
destination's to erase; the export lists where it went.

An erasure first leaves a tombstone per profile id: a trigger for the person read after it (an
event resolved, or a membership changed, before the services upstream did their part) plans
nothing, records nothing and sends nothing; nor does a job already queued (planned just before
the tombstone, queued after the erasure removed the person's jobs from the stream): the worker
drops it unsent and unrecorded. Neither the profile service (only asked for traits a template
or quiet hours need; NOT_FOUND is no traits) nor consent (its ledger erased, the
jurisdiction's default answers) would stop it.

Neither the planner nor the worker reads the tombstones: each replica keeps them in memory
(`ErasedPeople`), loaded at start and told of every erasure as every replica hears it
(Bus.listen on privacy.requested) and as its own participant records it. The tombstones stay
the source of truth: a restart reloads them."""

from __future__ import annotations

from google.protobuf import json_format

from delivery_service.store import DeliveryStore
from delivery_service.store.model import erasure_key
from mosaic.consent.v1 import privacy_pb2
from mosaic.events.v1 import privacy_request_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.privacy import Answer, hear_in_flight


def _profiles(request: privacy_request_pb2.PrivacyRequested) -> list[str]:
    return list(dict.fromkeys(p for p in [request.person_id, *request.profile_ids] if p))


# The most tombstones a replica keeps in memory: ~70 B each (an int of the hash's first 64
# bits in a set), so 500,000 erasures take ~35 MB beside the ~100 MB the service runs in. A
# deployment erases a small share of its people a year (0.5 % of 1,000,000 is 5,000), so this
# is decades of them; past it the memory is incomplete and a person not in it is looked up in
# the store, as before (a point read per planned delivery and per send), never missed.
MOST_IN_MEMORY = 500_000


def _short(key: str) -> int:
    # 64 bits of the hash: a person falsely taken for erased has a chance of n / 2**64
    # (~3e-14 at the bound), so nothing of the full hash is needed to tell them apart.
    return int(key[:16], 16)


class ErasedPeople:
    """A replica's memory of the erased profile ids (their tombstones' hashes, shortened): a
    set lookup on the hot path instead of a store read. Complete unless the store held more
    than `most` at load or more were heard since; then a miss is read from the store."""

    def __init__(self, store: DeliveryStore, most: int = MOST_IN_MEMORY) -> None:
        self.store = store
        self.most = most
        self._keys: set[int] = set()
        self.complete = False  # until loaded: every one not heard of is read from the store

    async def load(self) -> None:
        """Add the stored tombstones (to what was heard: a request heard may not be stored yet)."""
        found = await self.store.erasures(self.most + 1)
        self._keys |= {_short(key) for key in found[: self.most]}
        self.complete = len(found) <= self.most and len(self._keys) <= self.most

    async def follow(self, bus: Bus) -> None:
        """Hear every erasure from now on (Bus.listen), and make up for those missed: at start
        and each time the connection is back (a notice is at most once), the requests still in
        flight and the stored tombstones (a request gone from the stream is complete: its
        tombstone is stored)."""

        async def catch_up() -> None:
            await hear_in_flight(bus.jetstream, self.heard)
            await self.load()

        await bus.listen(topics.PRIVACY_REQUESTED, self.heard)
        bus.on_reconnect(catch_up)
        await catch_up()

    def add(self, profile_ids: list[str]) -> None:
        for profile_id in profile_ids:
            if len(self._keys) >= self.most:
                self.complete = False  # the tombstone is stored: read from there
                return
            self._keys.add(_short(erasure_key(profile_id)))

    def heard(self, request: privacy_request_pb2.PrivacyRequested) -> None:
        """Every replica's notice of a request (Bus.listen): an erased person is known at once,
        whichever replica's participant does delivery's part."""
        if request.kind == privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE:
            self.add(_profiles(request))

    def known(self, profile_id: str) -> bool:
        """Whether memory holds the profile id as erased (no hash while nobody is)."""
        return bool(self._keys) and _short(erasure_key(profile_id)) in self._keys

    async def erased(self, profile_id: str) -> bool:
        if self.known(profile_id):
            return True
        return not self.complete and bool(await self.store.erased([profile_id]))


class DeliveryPrivacy:
    def __init__(self, store: DeliveryStore, erased: ErasedPeople | None = None) -> None:
        self.store = store
        self.erased = erased or ErasedPeople(store)

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
            self.erased.add([profile_id])  # known here even if this replica's notice was lost
            removed += await self.store.erase_person(profile_id)  # the delivery log and dead letters
        return Answer({"delivery_log": removed})
