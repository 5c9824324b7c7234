"""Privacy requests as a saga: PrivacyService starts them, receipts complete them.

ExportPerson and ErasePerson store the request and its `privacy.requested` message in one
write (the outbox); every service holding personal data consumes it, does its part and
answers on `privacy.receipt`. The request completes when every configured participant
(`MOSAIC_PRIVACY_PARTICIPANTS`) has sent its final receipt; a participant that is down
answers when it is back, from its durable consumer. Receipts are stored, then erased from
their stream: an export part or the identifiers identity found are personal data. Once an
erasure completes, the person's requests and consent notices are erased from their streams.

An erasure suppresses the person at ingestion through `suppression.changed`: the identifier
the request named at once, and the identifiers identity's receipt lists when it arrives.
The request record keeps the person's (pseudonymous) profile ids and the receipts' counts: it
is the proof the erasure was done, and holds nothing else of the person.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid

import grpc
from google.protobuf import json_format

from consent_service.cache import ConsentCache
from consent_service.ledger import now_us
from consent_service.outbox import Relay
from consent_service.store import ConsentStore, OutboxEntry, micros, timestamp
from mosaic.consent.v1 import consent_pb2, privacy_pb2, privacy_service_pb2_grpc
from mosaic.consent.v1 import privacy_service_pb2 as pb
from mosaic.events.v1 import consent_changed_pb2, privacy_request_pb2, suppression_changed_pb2
from mosaic.identity.v1 import identity_service_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mosaic.platform.privacy import Answer, merge_parts

log = logging.getLogger("consent.privacy")
DAY_US = 86_400 * 1_000_000
DEADLINE_DAYS = {consent_pb2.JURISDICTION_GDPR: 30, consent_pb2.JURISDICTION_CCPA: 45}
SUPPRESSIBLE = ("user_id", "anonymous_id", "email", "phone")  # what ingestion's list matches
Kind = privacy_pb2.PrivacyRequestKind
State = privacy_pb2.PrivacyRequestState


def _suppression(request_id: str, person_id: str, identifiers, origin: str) -> OutboxEntry | None:
    kept = [
        suppression_changed_pb2.SuppressedIdentifier(type=i.type, value=i.value)
        for i in identifiers
        if i.type in SUPPRESSIBLE and i.value
    ]
    if not kept:
        return None
    message = suppression_changed_pb2.SuppressionChanged(profile_id=person_id, identifiers=kept, request_id=request_id)
    return OutboxEntry(
        f"suppress:{request_id}:{origin}", topics.SUPPRESSION_CHANGED.name, person_id, message.SerializeToString()
    )


def _announcement(request: privacy_pb2.PrivacyRequest) -> OutboxEntry:
    message = privacy_request_pb2.PrivacyRequested(
        request_id=request.request_id,
        kind=request.kind,
        person_id=request.person_id,
        profile_ids=request.profile_ids,
        requested_at=request.requested_at,
    )
    return OutboxEntry(
        f"privacy:{request.request_id}", topics.PRIVACY_REQUESTED.name, request.person_id, message.SerializeToString()
    )


class PrivacyServicer(privacy_service_pb2_grpc.PrivacyServiceServicer):
    def __init__(
        self,
        store: ConsentStore,
        relay: Relay,
        participants: tuple[str, ...],
        jurisdiction: consent_pb2.Jurisdiction,
        identity=None,
    ) -> None:
        self.store = store
        self.relay = relay
        self.participants = participants
        self.jurisdiction = jurisdiction
        self.identity = identity  # an IdentityService stub, to resolve identifiers; None: profile ids only

    async def ExportPerson(self, request, context):
        return pb.ExportPersonResponse(request=await self.start(Kind.PRIVACY_REQUEST_KIND_EXPORT, request))

    async def ErasePerson(self, request, context):
        return pb.ErasePersonResponse(request=await self.start(Kind.PRIVACY_REQUEST_KIND_ERASURE, request))

    async def _resolve(self, selector: pb.PersonSelector) -> str:
        if bool(selector.profile_id) == selector.HasField("identifier"):
            raise InvalidArgument("person", "must name either a profile_id or an identifier")
        if selector.profile_id:
            if len(selector.profile_id) > 256:
                raise InvalidArgument("person.profile_id", "must be at most 256 characters")
            return selector.profile_id
        if not selector.identifier.type or not selector.identifier.value:
            raise InvalidArgument("person.identifier", "needs a type and a value")
        if self.identity is None:
            raise FailedPrecondition(
                "person.identifier", "MOSAIC_IDENTITY_ADDRESS is not set: name the person by profile_id"
            )
        try:
            answer = await self.identity.Lookup(
                identity_service_pb2.LookupRequest(identifier=selector.identifier), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound("identifier", f"{selector.identifier.type}:{selector.identifier.value}") from None
            raise Unavailable("identity", f"{error.code().name}: {error.details()}") from error
        return answer.profile_id

    async def start(self, kind: privacy_pb2.PrivacyRequestKind, call) -> privacy_pb2.PrivacyRequest:
        if call.jurisdiction not in consent_pb2.Jurisdiction.values():
            raise InvalidArgument("jurisdiction", "is not a known Jurisdiction")
        if len(call.request_id) > 128 or len(call.requested_by) > 256:
            raise InvalidArgument("request_id" if len(call.request_id) > 128 else "requested_by", "is too long")
        if call.request_id:
            existing = await self.store.request(call.request_id)
            if existing is not None:
                return await self._again(existing, kind)
        profile_id = await self._resolve(call.person)
        head = await self.store.head(profile_id)
        jurisdiction = call.jurisdiction or self.jurisdiction
        requested = now_us()
        request = privacy_pb2.PrivacyRequest(
            request_id=call.request_id or str(uuid.uuid4()),
            kind=kind,
            person_id=head,
            profile_ids=await self.store.members(head),
            jurisdiction=jurisdiction,
            requested_at=timestamp(requested),
            deadline=timestamp(requested + DEADLINE_DAYS[jurisdiction] * DAY_US),
            state=State.PRIVACY_REQUEST_STATE_PENDING,
            participants=self.participants,
            requested_by=call.requested_by,
        )
        outbox = [_announcement(request)]
        if kind == Kind.PRIVACY_REQUEST_KIND_ERASURE and call.person.HasField("identifier"):
            # Stop the person's new events now, before any participant has erased anything.
            if (entry := _suppression(request.request_id, head, [call.person.identifier], "request")) is not None:
                outbox.append(entry)
        if not await self.store.put_request(request, outbox):
            existing = await self.store.request(request.request_id)
            assert existing is not None  # put_request found it there
            return await self._again(existing, kind)
        self.relay.kick()
        return request

    async def _again(
        self, existing: privacy_pb2.PrivacyRequest, kind: privacy_pb2.PrivacyRequestKind
    ) -> privacy_pb2.PrivacyRequest:
        """A repeated call: the same request, announced again while pending (idempotent)."""
        if existing.kind != kind:
            raise FailedPrecondition("request_id", f"names a request of another kind ({Kind.Name(existing.kind)})")
        if existing.state == State.PRIVACY_REQUEST_STATE_PENDING:
            await self.store.append([], [_announcement(existing)])
            self.relay.kick()
        return existing

    async def GetPrivacyRequest(self, request, context):
        if not request.request_id:
            raise InvalidArgument("request_id", "is required")
        found = await self.store.request(request.request_id)
        if found is None:
            raise NotFound("privacy request", request.request_id)
        answer = pb.GetPrivacyRequestResponse(request=found)
        if (
            found.kind == Kind.PRIVACY_REQUEST_KIND_EXPORT
            and found.state == State.PRIVACY_REQUEST_STATE_COMPLETED
            and not found.HasField("export_deleted_at")
        ):
            answer.export_json = json.dumps(await self.document(found), sort_keys=True)
        return answer

    async def document(self, request: privacy_pb2.PrivacyRequest) -> dict:
        parts: dict[str, list[str]] = {}
        for participant, _, text in sorted(await self.store.export_parts(request.request_id)):
            parts.setdefault(participant, []).append(text)
        return {
            "request_id": request.request_id,
            "person_id": request.person_id,
            **{participant: merge_parts(texts) for participant, texts in parts.items()},
        }

    async def ListPrivacyRequests(self, request, context):
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgument("page_size", "must be between 0 and 1000")
        if request.due_within_days < 0:
            raise InvalidArgument("due_within_days", "must not be negative")
        after = _read_token(request.page_token)
        requests = await self.store.requests()
        pending = State.PRIVACY_REQUEST_STATE_PENDING
        if request.pending_only or request.due_within_days:
            requests = [r for r in requests if r.state == pending]
        if request.due_within_days:
            horizon = now_us() + request.due_within_days * DAY_US
            requests = [r for r in requests if micros(r.deadline) <= horizon]
        requests.sort(key=_position)
        if after is not None:
            requests = [r for r in requests if _position(r) > after]
        size = request.page_size or 100
        page = requests[:size]
        token = _token(_position(page[-1])) if len(requests) > size else ""
        return pb.ListPrivacyRequestsResponse(requests=page, next_page_token=token)


class Receipts:
    """The consumer of `privacy.receipt`: stores each answer and completes the request."""

    def __init__(self, store: ConsentStore, relay: Relay, bus: Bus) -> None:
        self.store = store
        self.relay = relay
        self.bus = bus

    async def __call__(self, receipt: privacy_request_pb2.PrivacyReceipt, delivery: Delivery) -> None:
        request = await self.store.request(receipt.request_id)
        if request is None:
            log.warning("receipt for an unknown request", extra={"fields": {"request_id": receipt.request_id}})
        else:
            await self._store(request, receipt)
        await self.bus.erase(topics.PRIVACY_RECEIPT, delivery.stream_sequence)

    async def _store(self, request: privacy_pb2.PrivacyRequest, receipt: privacy_request_pb2.PrivacyReceipt) -> None:
        summary = None
        outbox = []
        if receipt.final:
            summary = privacy_pb2.PrivacyReceiptSummary(
                participant=receipt.participant,
                completed_at=receipt.completed_at,
                removed=receipt.removed,
                exported=receipt.exported,
            )
            if request.kind == Kind.PRIVACY_REQUEST_KIND_ERASURE:
                entry = _suppression(request.request_id, request.person_id, receipt.identifiers, receipt.participant)
                outbox = [entry] if entry is not None else []
        # An export the person's erasure overtook keeps its receipts, not their documents.
        document = "" if request.HasField("export_deleted_at") else receipt.export_json
        await self.store.put_receipt(request.request_id, receipt.participant, receipt.part, summary, document, outbox)
        if outbox:
            self.relay.kick()
        if not receipt.final or request.state == State.PRIVACY_REQUEST_STATE_COMPLETED:
            return
        current = await self.store.request(request.request_id)
        assert current is not None  # the request this receipt answers (requests are never deleted)
        answered = {r.participant for r in current.receipts}
        if set(current.participants) <= answered:
            # Before completing: a crash in between finds the receipt redelivered, and erases again.
            removed = await self._erase_streams(current) if current.kind == Kind.PRIVACY_REQUEST_KIND_ERASURE else {}
            current.state = State.PRIVACY_REQUEST_STATE_COMPLETED
            current.completed_at.GetCurrentTime()
            await self.store.complete_request(current)
            log.info(
                "privacy request completed",
                extra={"fields": {"request_id": current.request_id, "kind": Kind.Name(current.kind), **removed}},
            )

    async def _erase_streams(self, request: privacy_pb2.PrivacyRequest) -> dict[str, int]:
        """The person's requests and consent notices, once every participant has read its
        request (a participant removes what it produced when it answers; these are removed here,
        see `mosaic.platform.privacy`). A completion seen twice finds nothing the second time.
        The outbox is drained first, so the erasure's own consent.changed notice is in the stream
        to be removed: its readers need it no more (each consent replica heard it live, profile
        erased the profiles, ingestion forgets the person's consent with the suppression)."""
        await self.relay.drain()
        keys = list(dict.fromkeys([request.person_id, *request.profile_ids]))
        return {
            f"stream:{topic.stream}": await self.bus.erase_keys(topic, keys)
            for topic in (topics.PRIVACY_REQUESTED, topics.CONSENT_CHANGED)
        }


class ConsentParticipant:
    """Consent's own part: the ledger, person links and merge records of the person."""

    def __init__(self, store: ConsentStore, cache: ConsentCache, relay: Relay) -> None:
        self.store = store
        self.cache = cache
        self.relay = relay

    async def _profiles(self, request: privacy_request_pb2.PrivacyRequested) -> list[str]:
        ids = dict.fromkeys([request.person_id, *request.profile_ids])
        for profile_id in list(ids):
            ids.update(dict.fromkeys(await self.store.members(await self.store.head(profile_id))))
        return list(ids)

    async def export(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        ledger = await self.store.ledger(await self._profiles(request))
        entries = [json_format.MessageToDict(d, preserving_proto_field_name=True) for d in ledger]
        return Answer({"consent_ledger": len(entries)}, {"consent_ledger": entries})

    async def erase(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        profiles = await self._profiles(request)
        # The tombstones first: an event resolved to the person, read from now on, records
        # nothing (consent_service.events).
        await self.store.record_erasures(profiles)
        counts = await self.store.erase_profiles(profiles)
        counts["privacy_exports"] = await self._erase_exports(set(profiles))
        # Every replica's cache forgets the person.
        changed = consent_changed_pb2.ConsentChanged(
            person_id=request.person_id, profile_ids=profiles, cause=f"erasure {request.request_id}"
        )
        await self.store.append(
            [],
            [
                OutboxEntry(
                    f"erased:{request.request_id}",
                    topics.CONSENT_CHANGED.name,
                    request.person_id,
                    changed.SerializeToString(),
                )
            ],
        )
        self.cache.drop(profiles)
        self.relay.kick()
        return Answer(counts)

    async def _erase_exports(self, profiles: set[str]) -> int:
        """Delete the documents of the person's earlier exports (the requests stay, as proof)."""
        erased = 0
        for past in await self.store.requests():
            if (
                past.kind == Kind.PRIVACY_REQUEST_KIND_EXPORT
                and not past.HasField("export_deleted_at")
                and profiles.intersection([past.person_id, *past.profile_ids])
            ):
                await self.store.delete_export(past.request_id)
                past.export_deleted_at.GetCurrentTime()
                await self.store.complete_request(past)
                erased += 1
        return erased


def _position(request: privacy_pb2.PrivacyRequest) -> tuple[int, str]:
    return micros(request.deadline), request.request_id


def _token(position: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(f"{position[0]}\0{position[1]}".encode()).decode()


def _read_token(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    try:
        us, request_id = base64.urlsafe_b64decode(token.encode()).decode().split("\0")
        return int(us), request_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token", "is not a token this service issued") from None
