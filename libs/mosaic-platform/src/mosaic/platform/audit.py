"""The audit log: every call to a method marked `audited` in the protos is recorded before it
runs (who, which method, about whom, when), in the `AUDIT` stream for the deployment's audit
retention, and answered by `AuditService.ListAuditRecords` on every service.

A record names its subject by profile id, or by a keyed hash of an identifier: it never holds
the personal data itself.

While NATS is unreachable, records wait in memory (at most MAX_PENDING) and are published when
it is back, so reads and outbox-backed writes keep working through an outage; past that bound
a call is refused (UNAVAILABLE) rather than served unrecorded. A process that dies during an
outage loses the records it held.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections import deque
from datetime import timezone
from typing import Any

import nats.errors
from nats.js import api
from opentelemetry import trace

from mosaic.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from mosaic.platform import tasks, topics
from mosaic.platform.auth import Caller
from mosaic.platform.bus import Bus
from mosaic.platform.errors import InvalidArgument, Unavailable

MAX_PAGE = 1000
MAX_SCANNED = 20_000  # records read for one page at most; the token continues past them
MAX_PENDING = 10_000  # records held while NATS is away


def subject_of(request: Any, salt: str) -> str:
    """Whom a request is about: its profile id(s), or `<type>:<hash>` of its identifier."""
    if request is None:
        return ""
    fields = request.DESCRIPTOR.fields_by_name
    if "profile_id" in fields and request.profile_id:
        return request.profile_id
    if "profile_ids" in fields and len(request.profile_ids):
        return ",".join(list(request.profile_ids)[:10])
    if "identifier" in fields and request.HasField("identifier"):
        identifier = request.identifier
        digest = hmac.new(salt.encode(), f"{identifier.type}:{identifier.value}".encode(), hashlib.sha256)
        return f"{identifier.type}:{digest.hexdigest()[:32]}"
    return ""


class AuditLog:
    """Writes and reads one service's audit records."""

    def __init__(self, bus: Bus, service: str, salt: str) -> None:
        self.bus = bus
        self.service = service
        self.salt = salt
        self._pending: deque[tuple[audit_service_pb2.AuditRecord, str]] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, method: str, caller: Caller, request: Any) -> None:
        """Store the record, or hold it while NATS is away; raises Unavailable when neither can
        be done (the call is then refused)."""
        record = audit_service_pb2.AuditRecord(
            service=self.service,
            method=method,
            caller=caller.principal,
            subject=subject_of(request, self.salt),
            trace_id=format(trace.get_current_span().get_span_context().trace_id, "032x"),
        )
        record.time.GetCurrentTime()
        entry = (record, uuid.uuid4().hex)  # the id makes a retried publish a duplicate, not a second record
        if self.bus.connected and not self._pending:
            try:
                await self.bus.publish(topics.AUDIT, self.service, record, entry[1])
                return
            except Unavailable:
                pass
        self._hold(entry)

    def _hold(self, entry: tuple[audit_service_pb2.AuditRecord, str]) -> None:
        if len(self._pending) >= MAX_PENDING:
            raise Unavailable("nats", "the audit log cannot be written, so the call is refused", retry_after=5.0)
        self._pending.append(entry)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            if not self.bus.connected:
                await asyncio.sleep(0.5)
                continue
            record, message_id = self._pending[0]
            try:
                await self.bus.publish(topics.AUDIT, self.service, record, message_id)
            except Unavailable:
                await asyncio.sleep(0.5)
                continue
            self._pending.popleft()

    async def close(self) -> None:
        """Publish what is held, if NATS lets us within a few seconds; then stop trying."""
        if self._flusher is not None and not self._flusher.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._flusher), 5)
            except asyncio.TimeoutError:
                await tasks.cancel(self._flusher)

    async def list(
        self, request: audit_service_pb2.ListAuditRecordsRequest
    ) -> audit_service_pb2.ListAuditRecordsResponse:
        page_size = request.page_size or 100
        if not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE}")
        start_sequence = 0
        if request.page_token:
            if not request.page_token.isdigit() or not 0 < int(request.page_token) < 2**63:
                raise InvalidArgument("page_token", "must be a token from an earlier answer")
            start_sequence = int(request.page_token)
        end = request.end_time.ToDatetime(timezone.utc) if request.HasField("end_time") else None
        subject = topics.AUDIT.subject(topics.partition_of(self.service, self.bus.partitions), self.service)
        if start_sequence:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_sequence
            )
        elif request.HasField("start_time"):
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_TIME,
                opt_start_time=request.start_time.ToDatetime(timezone.utc),
            )
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        config.ack_policy = api.AckPolicy.NONE
        config.inactive_threshold = 30.0
        js = self.bus.jetstream
        try:
            consumer = await js.pull_subscribe(subject, stream=topics.AUDIT.stream, config=config)
            remaining = (await consumer.consumer_info()).num_pending or 0  # on this service's partition, from the start
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            raise Unavailable("nats", str(error)) from None
        records: list[audit_service_pb2.AuditRecord] = []
        sequence, scanned, past_end = start_sequence, 0, False
        try:
            while remaining > 0 and len(records) < page_size and scanned < MAX_SCANNED and not past_end:
                try:
                    messages = await consumer.fetch(min(256, remaining), timeout=5.0)
                except asyncio.TimeoutError as error:
                    raise Unavailable("nats", "the audit stream did not answer") from error
                for message in messages:
                    remaining -= 1
                    scanned += 1
                    sequence = message.metadata.sequence.stream
                    record = audit_service_pb2.AuditRecord.FromString(message.data)
                    if end is not None and record.time.ToDatetime(timezone.utc) >= end:
                        past_end = True
                        break
                    if (
                        record.service != self.service
                        or (request.caller and record.caller != request.caller)
                        or (request.subject and record.subject != request.subject)
                    ):
                        continue
                    records.append(record)
                    if len(records) == page_size:
                        break
        finally:
            await consumer.unsubscribe()
        more = remaining > 0 and not past_end and (len(records) == page_size or scanned >= MAX_SCANNED)
        next_token = str(sequence + 1) if more else ""
        return audit_service_pb2.ListAuditRecordsResponse(records=records, next_page_token=next_token)


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    """Serves the service's own audit records."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    async def ListAuditRecords(self, request, context):  # noqa: N802 - gRPC's name
        return await self.log.list(request)
