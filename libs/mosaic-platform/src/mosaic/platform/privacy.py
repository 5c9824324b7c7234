"""A service's part in privacy requests: consume `privacy.requested`, export or erase what the
service holds about the person, answer on `privacy.receipt`.

The service gives two functions, `export(request) -> Answer` and `erase(request) -> Answer`;
the participant runs the one the request asks for and publishes the receipt. Both must be
idempotent: a request is redelivered after a crash, and erasing again finds nothing. The
receipt's message id is fixed (`<request>:<participant>:<part>`), so a repeated answer is
dropped by JetStream, and the consent service keeps the first it stored.

An erasure also removes the person's messages from the streams of the topics the service
produces (`stream_cleaned_by`) and the service's own dead letters, each message found by its
subject (the token of its key, `topics.key_token`) and securely deleted (`Bus.erase_keys`); the
receipt counts them as `stream:<STREAM>`. The person's keys are the request's person and profile
ids, and the identifiers the service found (those key events.raw).

An export is split into parts of at most PART_BYTES of JSON (NATS refuses payloads over 1 MB):
each list of the document is cut between items; the last part says `final`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import tenacity
from google.protobuf import timestamp_pb2
from nats.js import JetStreamContext

from mosaic.consent.v1 import privacy_pb2
from mosaic.events.v1 import privacy_request_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery

PART_BYTES = 256 * 1024

# Topics whose producers do not remove the person's messages at the erasure, and why.
_REMOVED_ELSEWHERE = {
    # Removed by consent once the request completes: the other participants read the request
    # after it went out, and the erasure's own consent.changed notice is published after it.
    topics.PRIVACY_REQUESTED.name,
    topics.CONSENT_CHANGED.name,
    # Each erased by its consumer once used: consent once it stored a receipt, ingestion once its
    # suppression list holds the hashes (removing one earlier would let the person back in).
    topics.PRIVACY_RECEIPT.name,
    topics.SUPPRESSION_CHANGED.name,
    # The record of who read or changed personal data, kept for the audit retention: pseudonymous
    # (a profile id, a salted hash of an identifier), never the data.
    topics.AUDIT.name,
}
# Topics produced by a service that is no participant, removed by the one that knows the keys:
# ingestion keys events.raw by the person's first identifier, and identity (its consumer) is
# the service that knows the person's identifiers.
_REMOVED_BY_CONSUMER = {"identity": (topics.EVENTS_RAW,)}


def stream_cleaned_by(service: str) -> tuple[topics.Topic, ...]:
    """The topics whose streams the service's participant removes the person's messages from."""
    produced = [t for t in topics.REGISTRY if service in t.producers and t.name not in _REMOVED_ELSEWHERE]
    return (*_REMOVED_BY_CONSUMER.get(service, ()), *produced)


@dataclass
class Answer:
    """What a participant did: counts by table or kind, the exported document, identifiers."""

    counts: dict[str, int] = field(default_factory=dict)
    document: dict[str, Any] = field(default_factory=dict)
    identifiers: list[identity_pb2.Identifier] = field(default_factory=list)


Work = Callable[[privacy_request_pb2.PrivacyRequested], Awaitable[Answer]]


def split_document(document: dict[str, Any], limit: int = PART_BYTES) -> list[str]:
    """The document as JSON objects of about `limit` bytes at most; lists are cut between items
    (an item larger than `limit` travels alone), other values go in the first part."""
    first = {k: v for k, v in document.items() if not isinstance(v, list)}
    parts: list[dict[str, Any]] = [first]
    size = len(json.dumps(first, default=str))
    for key, items in document.items():
        if not isinstance(items, list):
            continue
        parts[-1].setdefault(key, [])
        for item in items:
            item_size = len(json.dumps(item, default=str)) + 2
            if size + item_size > limit and any(parts[-1].values()):
                parts.append({key: []})
                size = 0
            parts[-1].setdefault(key, []).append(item)
            size += item_size
    return [json.dumps(part, default=str, sort_keys=True) for part in parts]


def merge_parts(parts: Iterable[str]) -> dict[str, Any]:
    """The inverse of split_document."""
    document: dict[str, Any] = {}
    for text in parts:
        for key, value in json.loads(text).items():
            if isinstance(value, list):
                document.setdefault(key, []).extend(value)
            else:
                document.setdefault(key, value)
    return document


class Participant:
    """The consumer of `privacy.requested` for one service."""

    def __init__(self, name: str, bus: Bus, export: Work, erase: Work) -> None:
        self.name = name
        self.bus = bus
        self._work = {privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT: export, privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE: erase}

    def start(self, partitions: Iterable[int] | None = None) -> None:
        """Consume privacy requests on the partitions the replica holds (or those named)."""
        self.bus.consume(topics.PRIVACY_REQUESTED, self, partitions)

    async def __call__(self, request: privacy_request_pb2.PrivacyRequested, delivery: Delivery | None = None) -> None:
        work = self._work.get(request.kind)
        if work is None:
            return  # a kind this version does not know: nothing of ours to do
        answer = await work(request)
        if request.kind == privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE:
            answer.counts.update(await self._erase_streams(request, answer))
        done = timestamp_pb2.Timestamp()
        done.GetCurrentTime()
        texts = split_document(answer.document) if request.kind == privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT else [""]
        messages = []
        for part, text in enumerate(texts):
            receipt = privacy_request_pb2.PrivacyReceipt(
                request_id=request.request_id,
                participant=self.name,
                person_id=request.person_id,
                part=part,
                final=part == len(texts) - 1,
                export_json=text,
                completed_at=done,
            )
            if receipt.final:
                target = (
                    receipt.removed if request.kind == privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE else receipt.exported
                )
                target.update(answer.counts)
                receipt.identifiers.extend(answer.identifiers)
            messages.append(
                (request.person_id, receipt.SerializeToString(), f"{request.request_id}:{self.name}:{part}")
            )
        await self.bus.publish_many(topics.PRIVACY_RECEIPT, messages)

    async def _erase_streams(self, request: privacy_request_pb2.PrivacyRequested, answer: Answer) -> dict[str, int]:
        keys = list(dict.fromkeys([request.person_id, *request.profile_ids, *(i.value for i in answer.identifiers)]))
        counts = {f"stream:{t.stream}": await self.bus.erase_keys(t, keys) for t in stream_cleaned_by(self.name)}
        consumed = [t for t in topics.REGISTRY if self.name in t.consumers]
        if consumed:  # a service of the mesh (a third-party participant has no registered topics)
            dead = [await self.bus.erase_dead_letters(t, keys) for t in consumed]
            counts[f"stream:{topics.DEAD_LETTER_STREAM}"] = sum(dead)
        return counts


async def in_flight(js: JetStreamContext) -> list[privacy_request_pb2.PrivacyRequested]:
    """The requests still in privacy.requested (an ephemeral ordered consumer, from the first)."""
    if not (await js.stream_info(topics.PRIVACY_REQUESTED.stream)).state.messages:
        return []
    found = []
    sub = await js.subscribe(topics.PRIVACY_REQUESTED.wildcard, ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            found.append(privacy_request_pb2.PrivacyRequested.FromString(msg.data))
            if msg.metadata.num_pending == 0:
                return found
    finally:
        await sub.unsubscribe()


async def hear_in_flight(js: JetStreamContext, heard: Callable[[privacy_request_pb2.PrivacyRequested], None]) -> None:
    """Hear again every request still in privacy.requested: what a replica does once its
    connection is back, since `Bus.listen` (how every replica hears each request) is at most
    once. A request no longer in the stream is complete, so each participant's part is done and
    stored. Retried for a minute; then logged, and the next reconnect tries again."""
    try:
        async for attempt in tenacity.AsyncRetrying(
            stop=tenacity.stop_after_delay(60), wait=tenacity.wait_random(0.2, 1.0), reraise=True
        ):
            with attempt:
                for request in await in_flight(js):
                    heard(request)
    except Exception:  # noqa: BLE001 - logged; the next reconnect tries again
        logging.getLogger("mosaic.privacy").exception("privacy requests in flight not read again")
