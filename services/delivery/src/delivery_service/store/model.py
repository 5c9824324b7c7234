"""Delivery's records: the protobuf messages the store keeps, by short names."""

from __future__ import annotations

from mosaic.delivery.v1 import campaign_pb2, delivery_pb2

DeadLetter = delivery_pb2.DeadLetter
Campaign = campaign_pb2.Campaign
CampaignRun = campaign_pb2.CampaignRun
Job = delivery_pb2.DeliveryJob


def due_at(job: Job) -> float:
    return job.not_before.ToNanoseconds() / 1e9
