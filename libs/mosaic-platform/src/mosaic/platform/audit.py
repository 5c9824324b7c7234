"""The audit log: every call to a method marked `audited` in the protos is recorded before it
runs (who, which method, about whom, when), in the `AUDIT` stream for the deployment's audit
retention, and answered by `AuditService.ListAuditRecords` on every service.

A record names its subject by profile id, or by a keyed hash of an identifier: it never holds
the personal data itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from datetime import timezone
from typing import Any

import nats.errors
from nats.js import api
from opentelemetry import trace

from mosaic.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.auth import Caller
from mosaic.platform.bus import Bus
from mosaic.platform.errors import InvalidArgument, Unavailable

MAX_PAGE = 1000
MAX_SCANNED = 20_000  # records read for one page at most; the token continues past them


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

    async def record(self, method: str, caller: Caller, request: Any) -> None:
        """Store the record; raises Unavailable when it cannot (the call is then refused)."""
        record = audit_service_pb2.AuditRecord(
            service=self.service, method=method, caller=caller.principal,
            subject=subject_of(request, self.salt),
            trace_id=format(trace.get_current_span().get_span_context().trace_id, "032x"),
        )
        record.time.GetCurrentTime()
        await self.bus.publish(topics.AUDIT, self.service, record, uuid.uuid4().hex)

    async def list(self, request: audit_service_pb2.ListAuditRecordsRequest) -> audit_service_pb2.ListAuditRecordsResponse:
        page_size = request.page_size or 100
        if not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE}")
        start_sequence = 0
        if request.page_token:
            if not request.page_token.isdigit() or not 0 < int(request.page_token) < 2**63:
                raise InvalidArgument("page_token", "must be a token from an earlier answer")
            start_sequence = int(request.page_token)
        end = request.end_time.ToDatetime(timezone.utc) if request.HasField("end_time") else None
        subject = topics.AUDIT.subject(topics.partition_of(self.service, self.bus.partitions))
        if start_sequence:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_sequence)
        elif request.HasField("start_time"):
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME,
                                        opt_start_time=request.start_time.ToDatetime(timezone.utc).isoformat())
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        config.ack_policy = api.AckPolicy.NONE
        config.inactive_threshold = 30.0
        js = self.bus.jetstream
        try:
            last = (await js.stream_info(topics.AUDIT.stream)).state.last_seq
            consumer = await js.pull_subscribe(subject, stream=topics.AUDIT.stream, config=config)
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            raise Unavailable("nats", str(error)) from None
        records: list[audit_service_pb2.AuditRecord] = []
        next_token, scanned, sequence = "", 0, start_sequence
        try:
            while len(records) < page_size and sequence < last:
                if scanned >= MAX_SCANNED:
                    next_token = str(sequence + 1)
                    break
                try:
                    messages = await consumer.fetch(min(256, page_size * 4), timeout=1.0)
                except asyncio.TimeoutError:
                    break  # the rest of the stream belongs to other services' partitions
                for message in messages:
                    scanned += 1
                    sequence = message.metadata.sequence.stream
                    record = audit_service_pb2.AuditRecord.FromString(message.data)
                    if end is not None and record.time.ToDatetime(timezone.utc) >= end:
                        sequence = last
                        break
                    if record.service != self.service or (request.caller and record.caller != request.caller) \
                            or (request.subject and record.subject != request.subject):
                        continue
                    records.append(record)
                    if len(records) == page_size:
                        next_token = str(sequence + 1) if sequence < last else ""
                        break
        finally:
            await consumer.unsubscribe()
        return audit_service_pb2.ListAuditRecordsResponse(records=records, next_page_token=next_token)


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    """Serves the service's own audit records."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    async def ListAuditRecords(self, request, context):  # noqa: N802 - gRPC's name
        return await self.log.list(request)

