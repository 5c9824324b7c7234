"""Delivery's records: the protobuf messages the store keeps, by short names."""

from __future__ import annotations

import hashlib

from mosaic.delivery.v1 import campaign_pb2, delivery_pb2

DeadLetter = delivery_pb2.DeadLetter
Campaign = campaign_pb2.Campaign
CampaignRun = campaign_pb2.CampaignRun
Job = delivery_pb2.DeliveryJob


def due_at(job: Job) -> float:
    return job.not_before.ToNanoseconds() / 1e9


def erasure_key(profile_id: str) -> str:
    """What an erasure's tombstone keeps of a profile id: a hash (a tombstone need only answer
    "was this one erased?", and must not name the person it is about)."""
    return hashlib.sha256(f"delivery-erased:{profile_id}".encode()).hexdigest()
