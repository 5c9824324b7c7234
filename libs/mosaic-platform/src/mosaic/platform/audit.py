"""The audit log: every call to a method marked `audited` in the protos is recorded before it
runs (who, which method, about whom, when), in the `AUDIT` stream for the deployment's audit
retention, and answered by `AuditService.ListAuditRecords` on every service.

A record names its subject only by a keyed hash: `profile:<hash>` of a profile id, or
`<type>:<hash>` of an identifier, never a value as the caller sent it (a caller may name a
person by their e-mail address in a profile_id field). The key is the deployment's
(MOSAIC_AUDIT_SALT, else one made by the first service that starts and kept in a NATS key-value
bucket, the same for every service): linking a record to a person takes the key and the
person's id, which is what an auditor asked "who read this person?" has. So the log can be kept
for its retention after the person is erased (README, "Privacy requests").

While NATS is unreachable, records wait in memory (at most MAX_PENDING) and are published when
it is back, so reads and outbox-backed writes keep working through an outage; past that bound
a call is refused (UNAVAILABLE) rather than served unrecorded. A process that dies during an
outage loses the records it held.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import uuid
from collections import deque
from datetime import timezone
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api
from opentelemetry import trace

from mosaic.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from mosaic.platform import tasks, topics
from mosaic.platform.auth import Caller
from mosaic.platform.bus import Bus
from mosaic.platform.errors import InvalidArgument, Unavailable
from mosaic.platform.nats_connection import settling

MAX_PAGE = 1000
MAX_SCANNED = 20_000  # records read for one page at most; the token continues past them
MAX_PENDING = 10_000  # records held while NATS is away


_KEYED = re.compile(r"^[a-z_]+:[0-9a-f]{32}(,[a-z_]+:[0-9a-f]{32})*$")
SALT_BUCKET = "mosaic-audit-key"


def keyed(salt: str, text: str) -> str:
    return hmac.new(salt.encode(), text.encode(), hashlib.sha256).hexdigest()[:32]


def _profiles(salt: str, profile_ids) -> str:
    return ",".join(f"profile:{keyed(salt, p)}" for p in list(profile_ids)[:10])


def _identifier(salt: str, kind: str, value: str) -> str:
    return f"{kind}:{keyed(salt, f'{kind}:{value}')}"


def _named(message: Any, salt: str) -> str:
    fields = message.DESCRIPTOR.fields_by_name
    if "profile_id" in fields and message.profile_id:
        return _profiles(salt, [message.profile_id])
    if "profile_ids" in fields and len(message.profile_ids):
        return _profiles(salt, message.profile_ids)
    if "identifier" in fields and message.HasField("identifier"):
        return _identifier(salt, message.identifier.type, message.identifier.value)
    if "identifiers" in fields and len(message.identifiers):
        return ",".join(_identifier(salt, i.type, i.value) for i in list(message.identifiers)[:10])
    return ""


def subject_of(request: Any, salt: str) -> str:
    """Whom a request is about, keyed: its profile id(s), else its identifier(s), on the request
    or one message down (a consent decision, a person selector)."""
    if request is None:
        return ""
    found = _named(request, salt)
    for field in request.DESCRIPTOR.fields:
        if found:
            break
        if field.message_type is not None and not field.is_repeated and request.HasField(field.name):
            value = getattr(request, field.name)
            if hasattr(value, "DESCRIPTOR") and value.DESCRIPTOR.full_name.startswith("mosaic."):
                found = _named(value, salt)
    return found


def wanted_subject(text: str, salt: str) -> str:
    """A ListAuditRecords filter as records keep it: a profile id or `type:value` in clear is
    keyed here; a subject copied from a record is taken as it is."""
    if _KEYED.match(text):
        return text
    kind, sep, value = text.partition(":")
    return _identifier(salt, kind, value) if sep else _profiles(salt, [text])


async def deployment_salt(bus: Bus, replicas: int = 1, patience: float = 30.0) -> str:
    """The audit key when MOSAIC_AUDIT_SALT is not set: made once per deployment by the first
    service to start, kept in a NATS key-value bucket, the same for every service and replica.
    A bucket not yet writable (see `settling`) is written again for up to `patience` seconds."""
    js = bus.jetstream
    config = api.KeyValueConfig(bucket=SALT_BUCKET, history=1, replicas=replicas, storage=api.StorageType.FILE)
    try:
        kv = await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        kv = await js.key_value(SALT_BUCKET)
    async for attempt in settling(patience):
        with attempt:
            try:
                await kv.create("salt", secrets.token_hex(32).encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # another service made it first
            entry = await kv.get("salt")
    assert entry.value is not None
    return entry.value.decode()


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
        about = wanted_subject(request.subject, self.salt) if request.subject else ""
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
                        or (about and about not in record.subject.split(","))
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
