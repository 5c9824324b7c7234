"""Destinations, campaigns, the delivery log, held jobs and the dead-letter store.

A delivery's id is its idempotency key (destination, trigger, profile, profile version): a
redelivered membership change finds the delivery already decided and queues nothing twice.
Dead letters are kept by destination, in delivery id order, so a page is one range read.
Deliveries and dead letters are kept for their retention (mosaic.platform.retention) from
their last write: a Cassandra TTL, or an expiry column the embedded store's reads respect and
its sweeper deletes by.

A campaign's run is written by compare-and-set on its version (a lightweight transaction on
Cassandra), so one replica at a time claims a tick; its definition (updated, paused, resumed)
by compare-and-set on the stored definition itself, so two changes at once never lose one. Jobs held for quiet hours are kept by
person and by (partition, due time): the sweeper of a partition reads what is due in one range.
An erased profile id leaves a tombstone (`delivery_erasures`, a hash of the id, kept for good):
a trigger for the person that arrives after the erasure plans nothing (see privacy.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from delivery_service.store.model import Campaign, CampaignRun, DeadLetter, Job
from mosaic.delivery.v1 import delivery_pb2


class DeliveryStore(Protocol):
    async def create_destination(self, destination: delivery_pb2.Destination) -> None: ...
    async def destinations(self) -> list[delivery_pb2.Destination]: ...
    async def delete_destination(self, destination_id: str) -> None: ...
    async def delivery(self, profile_id: str, delivery_id: str) -> delivery_pb2.Delivery | None: ...
    async def save_delivery(self, delivery: delivery_pb2.Delivery) -> None: ...
    async def save_deliveries(self, deliveries: Sequence[delivery_pb2.Delivery]) -> None: ...
    async def deliveries(self, profile_id: str, after: str = "", limit: int = 0) -> list[delivery_pb2.Delivery]:
        """The profile's deliveries with ids after `after`, by id; at most `limit` (0: all that the
        backend reads at once, 1000 on Cassandra)."""
        ...

    async def put_dead_letter(self, letter: DeadLetter) -> None: ...
    async def dead_letter(self, destination_id: str, delivery_id: str) -> DeadLetter | None: ...
    async def dead_letters(self, destination_id: str, after: str, limit: int) -> list[DeadLetter]: ...
    async def delete_dead_letter(self, letter: DeadLetter) -> None: ...
    async def create_campaign(self, campaign: Campaign) -> None: ...
    async def campaigns(self) -> list[Campaign]: ...
    async def campaign(self, campaign_id: str) -> tuple[Campaign, bytes] | None:
        """The campaign and its stored form, the token `replace_campaign` compares; None if absent."""
        ...

    async def replace_campaign(self, campaign: Campaign, token: bytes) -> bool:
        """Write the campaign's new definition if its stored form is still `token` (and it still
        exists); whether it was written."""
        ...

    async def delete_campaign(self, campaign_id: str) -> None:
        """Delete the campaign and its run."""
        ...

    async def campaign_runs(self) -> dict[str, tuple[int, CampaignRun]]:
        """Every campaign's run and its version."""
        ...

    async def save_campaign_run(self, campaign_id: str, run: CampaignRun, version: int) -> bool:
        """Write the run if its stored version is still `version` (0: none stored yet); whether
        it was written (then its version is `version + 1`)."""
        ...

    async def hold(self, job: Job, slot: int) -> None:
        """Keep a job until its not_before, for the sweeper of partition `slot`."""
        ...

    async def due_jobs(self, slot: int, now: float, limit: int) -> list[Job]:
        """Held jobs of partition `slot` due at `now` (epoch seconds), earliest first."""
        ...

    async def unhold(self, job: Job, slot: int) -> None: ...
    async def erase_person(self, profile_id: str) -> int:
        """Delete the person's delivery log, held jobs and dead letters; how many records went."""
        ...

    async def record_erasure(self, profile_id: str) -> None:
        """Keep a tombstone of an erased profile id (its hash, `erasure_key`)."""
        ...

    async def erased(self, profile_ids: Sequence[str]) -> set[str]:
        """Those of the profile ids that have a tombstone."""
        ...

    async def erasures(self, most: int) -> list[str]:
        """Up to `most` tombstones (`erasure_key` hashes), in no particular order: what a
        replica's memory of the erased (privacy.ErasedPeople) starts from."""
        ...

    async def close(self) -> None: ...
