"""The campaign scheduler: every replica looks for due ticks; one claims each and plans it.

A tick is claimed by compare-and-set on the campaign's run (its version), so two replicas, or
a replica and its own restart, never both plan it: the loser sees the run RUNNING and leaves
it. The owner renews its lease as it goes; one that stops mid-way lets the lease run out, and
the next replica to look resumes the tick from the start. Resuming is safe because each
member's delivery id names the campaign, the tick and the person: what was decided is left
alone and what was queued is dropped by JetStream as a copy. The members are what the
segmentation service lists at the tick (ListMembers, over gRPC).

Before each batch of members the campaign is read again: deleted, the run stops; paused, the run
is left PAUSED (with how many were planned), and resuming the campaign resumes it as above.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import grpc
from google.protobuf import timestamp_pb2

from delivery_service import campaigns, schedule
from delivery_service.destinations import DestinationCache
from delivery_service.planner import Planner
from delivery_service.quiet import window_of
from delivery_service.store import DeliveryStore
from mosaic.delivery.v1 import campaign_pb2
from mosaic.platform import tasks
from mosaic.segmentation.v1 import segmentation_service_pb2

log = logging.getLogger("mosaic.delivery.scheduler")
RunStatus = campaign_pb2.CampaignRunStatus
Run = campaign_pb2.CampaignRun
BATCH = 64  # members planned at once
MEMBER_WAIT = 30.0  # seconds segmentation may take for the next member before the run stops
NOT_RETRIED = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


@dataclass(frozen=True)
class SchedulerSettings:
    interval: float = 5.0  # how often due ticks are looked for
    grace: float = 3600.0  # how late a tick may still fire
    lease: float = 30.0  # how long a claim holds without renewal


class LostClaim(Exception):
    """Another replica took the tick over, or the campaign was deleted."""


class Paused(Exception):
    """The campaign was paused while its tick was being planned; the run's version then."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


class Scheduler:
    def __init__(
        self,
        store: DeliveryStore,
        cache: DestinationCache,
        planner: Planner,
        segments,
        settings: SchedulerSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.store = store
        self.cache = cache
        self.planner = planner
        self.segments = segments
        self.settings = settings
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        # A run cut short keeps its claim until the lease runs out; then it is resumed.
        await tasks.cancel(self._task, *self._runs.values())

    async def _forever(self) -> None:
        while True:
            try:
                await self.look()
            except Exception:  # noqa: BLE001 - the store is down: look again next time
                log.warning("campaigns not looked at", exc_info=True)
            await asyncio.sleep(self.settings.interval)

    async def look(self) -> None:
        """Claim and start every due tick that no replica is planning."""
        runs = await self.store.campaign_runs()
        now = self.clock()
        for campaign in await self.store.campaigns():
            if campaign.campaign_id in self._runs:
                continue
            version, run = runs.get(campaign.campaign_id, (0, None))
            step = schedule.decide(campaign, campaigns.zone_of(campaign), run, now, self.settings.grace)
            if step is None:
                continue
            claimed = Run(tick=_stamp(step.tick), owner=self.owner)
            claimed.started_at.CopyFrom(_stamp(now))
            if step.action == "skip":
                claimed.status = RunStatus.CAMPAIGN_RUN_STATUS_SKIPPED
                claimed.finished_at.CopyFrom(claimed.started_at)
                claimed.detail = f"found {(now - step.tick).total_seconds():.0f} s late, past the grace"
                if await self.store.save_campaign_run(campaign.campaign_id, claimed, version):
                    log.warning("campaign %s: tick %s skipped: %s", campaign.campaign_id, step.tick, claimed.detail)
                continue
            claimed.status = RunStatus.CAMPAIGN_RUN_STATUS_RUNNING
            claimed.lease_until.CopyFrom(_stamp(now + timedelta(seconds=self.settings.lease)))
            if step.action == "resume" and run is not None:
                claimed.detail = f"resumed from {run.owner}" + (f" after: {run.detail}" if run.detail else "")
            if await self.store.save_campaign_run(campaign.campaign_id, claimed, version):
                key = campaign.campaign_id
                self._runs[key] = asyncio.create_task(self._run(campaign, claimed, version + 1, step.tick))
                self._runs[key].add_done_callback(functools.partial(self._forget, key))

    def _forget(self, campaign_id: str, _: asyncio.Task[None]) -> None:
        self._runs.pop(campaign_id, None)

    async def _run(self, campaign: campaign_pb2.Campaign, run: Run, version: int, tick: datetime) -> None:
        key = campaign.campaign_id
        try:
            version = await self._plan_members(campaign, run, version, tick)
        except LostClaim:
            log.warning("campaign %s: tick %s taken over or deleted", key, tick)
            return
        except Paused as paused:
            run.status = RunStatus.CAMPAIGN_RUN_STATUS_PAUSED
            run.ClearField("lease_until")
            run.detail = f"paused after {run.members} members"
            if await self.store.save_campaign_run(key, run, paused.version):
                log.info("campaign %s: tick %s paused after %d members", key, tick, run.members)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() not in NOT_RETRIED:
                return await self._release(key, run, version, f"{error.code().name}: {error.details()}")
            run.detail = f"segmentation refused: {error.code().name}: {error.details()}"
        except Exception as error:  # noqa: BLE001 - consent, the store or NATS down: resumed later
            log.warning("campaign %s: tick %s stopped", key, tick, exc_info=True)
            first = error.exceptions[0] if isinstance(error, ExceptionGroup) else error  # from the TaskGroup
            return await self._release(key, run, version, f"{type(first).__name__}: {first}")
        run.status = RunStatus.CAMPAIGN_RUN_STATUS_DONE
        run.ClearField("lease_until")
        run.finished_at.CopyFrom(_stamp(self.clock()))
        if await self.store.save_campaign_run(key, run, version):
            log.info(
                "campaign planned",
                extra={"fields": {"campaign_id": key, "tick": tick.isoformat(), "members": run.members}},
            )

    async def _plan_members(self, campaign: campaign_pb2.Campaign, run: Run, version: int, tick: datetime) -> int:
        """Plan every member of the segment; the run's version after its last renewal."""
        destination = self.cache.get(campaign.destination_id) or await self._stored(campaign.destination_id)
        if destination is None:
            run.detail = f"destination {campaign.destination_id!r} no longer exists: nothing sent"
            return version
        destination = campaigns.rendered_with(destination, campaign)
        quiet = window_of(campaign.quiet_hours, "campaign.quiet_hours")
        renew_at = self.clock() + timedelta(seconds=self.settings.lease / 3)
        run.members = 0
        batch: list[str] = []
        members = self.segments.ListMembers(segmentation_service_pb2.ListMembersRequest(segment_id=campaign.segment_id))
        try:
            while True:
                member = await asyncio.wait_for(members.read(), MEMBER_WAIT)
                if member is not grpc.aio.EOF:
                    batch.append(member.profile_id)
                if len(batch) == BATCH or (member is grpc.aio.EOF and batch):
                    await self._still_active(campaign.campaign_id, version)
                    await self._plan_batch(campaign, destination, batch, tick, quiet)
                    run.members += len(batch)
                    batch = []
                if member is grpc.aio.EOF:
                    return version
                if self.clock() >= renew_at:
                    version = await self._renew(campaign.campaign_id, run, version)
                    renew_at = self.clock() + timedelta(seconds=self.settings.lease / 3)
        finally:
            members.cancel()

    async def _still_active(self, campaign_id: str, version: int) -> None:
        """Raise LostClaim if the campaign was deleted, Paused if it was paused."""
        found = await self.store.campaign(campaign_id)
        if found is None:
            raise LostClaim(campaign_id)
        if found[0].HasField("paused_at"):
            raise Paused(version)

    async def _stored(self, destination_id: str):
        """The destination from the store: this replica's cache may not have a new one yet."""
        return next((d for d in await self.store.destinations() if d.destination_id == destination_id), None)

    async def _plan_batch(self, campaign, destination, profile_ids: list[str], tick: datetime, quiet) -> None:
        async with asyncio.TaskGroup() as group:
            for profile_id in profile_ids:
                group.create_task(self.planner.on_campaign(campaign, destination, profile_id, tick, quiet))

    async def _renew(self, campaign_id: str, run: Run, version: int) -> int:
        run.lease_until.CopyFrom(_stamp(self.clock() + timedelta(seconds=self.settings.lease)))
        if not await self.store.save_campaign_run(campaign_id, run, version):
            raise LostClaim(campaign_id)
        return version + 1

    async def _release(self, campaign_id: str, run: Run, version: int, why: str) -> None:
        """Give the tick back at once (its lease ends now): the next look resumes it."""
        run.lease_until.CopyFrom(_stamp(self.clock()))
        run.detail = why
        try:
            await self.store.save_campaign_run(campaign_id, run, version)
        except Exception:  # noqa: BLE001 - the store is down too: the lease runs out instead
            log.warning("campaign %s: tick not released", campaign_id, exc_info=True)


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
