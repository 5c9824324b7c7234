"""Destinations: the rules a definition must follow, how it is shown, and the cache.

Every replica keeps all destinations in memory (a few hundred at most, each a small message)
and re-reads them every few seconds, so no message handled costs a store read; a replica's own
changes apply at once. Secrets (the signing secret, header values, the SMTP password) stay in
the store and the cache; `public` strips them from every answer and log.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
from collections.abc import Callable
from urllib.parse import urlsplit

from delivery_service import templates
from delivery_service.audience_files import EXTENSIONS
from delivery_service.quiet import window_of
from delivery_service.ssrf import AddressPolicy, Forbidden
from delivery_service.store import DeliveryStore
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform import tasks
from mosaic.platform.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("mosaic.delivery.destinations")

Kind = delivery_pb2.DestinationKind
TriggerKind = delivery_pb2.TriggerKind
Security = delivery_pb2.SmtpSecurity
DESTINATION_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
RESERVED_HEADERS = {
    "content-type",
    "content-length",
    "host",
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "tracestate",
}
HTTP_KINDS = (
    Kind.DESTINATION_KIND_WEBHOOK,
    Kind.DESTINATION_KIND_SMS,
    Kind.DESTINATION_KIND_PUSH,
    Kind.DESTINATION_KIND_AUDIENCE_SYNC,
)
REDACTED = "<redacted>"


def kind_of(destination: delivery_pb2.Destination) -> int:
    return destination.kind or Kind.DESTINATION_KIND_WEBHOOK


def triggers_of(destination: delivery_pb2.Destination) -> list[delivery_pb2.Trigger]:
    """Its triggers, the legacy segment_id read as an entry trigger; an audience sync follows
    both directions of its segment."""
    found = list(destination.triggers)
    if destination.segment_id:
        found.append(
            delivery_pb2.Trigger(kind=TriggerKind.TRIGGER_KIND_SEGMENT_ENTERED, segment_id=destination.segment_id)
        )
        if kind_of(destination) == Kind.DESTINATION_KIND_AUDIENCE_SYNC:
            found.append(
                delivery_pb2.Trigger(kind=TriggerKind.TRIGGER_KIND_SEGMENT_EXITED, segment_id=destination.segment_id)
            )
    return found


def public(destination: delivery_pb2.Destination) -> delivery_pb2.Destination:
    """The destination as answers show it: no signing secret nor SMTP password, header values
    redacted."""
    shown = delivery_pb2.Destination()
    shown.CopyFrom(destination)
    shown.ClearField("signing_secret")
    shown.email.ClearField("password")
    for name in shown.headers:
        shown.headers[name] = REDACTED
    return shown


async def validate(d: delivery_pb2.Destination, policy: AddressPolicy, audience_files: bool = False) -> None:
    """Raise InvalidArgument naming the first field that breaks a rule; fill in defaults.
    `audience_files`: whether the deployment has a folder for audience syncs to files."""
    if not DESTINATION_ID.match(d.destination_id):
        raise InvalidArgument("destination.destination_id", "must be 1-64 lower-case letters, digits, - or _")
    if not d.purpose:
        raise InvalidArgument("destination.purpose", "is required: the consent purpose a send needs")
    kind = kind_of(d)
    if d.audience.file_format:
        _check_audience_file(d, kind, audience_files)
    elif kind in HTTP_KINDS:
        await _check_url(d.webhook_url, policy)
    elif kind == Kind.DESTINATION_KIND_EMAIL:
        await _check_email(d.email, policy)
    else:
        raise InvalidArgument("destination.kind", f"unknown kind {d.kind}")
    if kind == Kind.DESTINATION_KIND_AUDIENCE_SYNC and (not d.segment_id or d.triggers):
        raise InvalidArgument(
            "destination.segment_id", "an audience sync names its segment in segment_id, and no triggers"
        )
    if (
        kind in (Kind.DESTINATION_KIND_SMS, Kind.DESTINATION_KIND_PUSH, Kind.DESTINATION_KIND_EMAIL)
        and not d.body_template
    ):
        raise InvalidArgument("destination.body_template", "is required for e-mail, SMS and push")
    for index, trigger in enumerate(d.triggers):
        _check_trigger(f"destination.triggers[{index}]", trigger)
    for field, source in (("body_template", d.body_template), ("email.subject_template", d.email.subject_template)):
        reason = templates.check(source)
        if reason:
            raise InvalidArgument(f"destination.{field}", f"does not compile: {reason}")
    for name, value in d.headers.items():
        if not HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
            raise InvalidArgument(
                f"destination.headers[{name!r}]",
                "must be a header name (letters, digits, -) Mosaic does not set itself",
            )
        if any(c in value for c in "\r\n\0"):
            raise InvalidArgument(f"destination.headers[{name!r}]", "must be a value without line breaks or NUL")
    _check_limits(d.limits)
    cap = d.frequency_cap
    if cap.max_deliveries < 0 or (cap.max_deliveries and cap.window_seconds <= 0):
        raise InvalidArgument(
            "destination.frequency_cap", "max_deliveries must not be negative and needs window_seconds > 0"
        )
    if d.signing_secret:
        if not _secret_ok(d.signing_secret):
            raise InvalidArgument("destination.signing_secret", "must be `whsec_` and the base64 of 24 to 64 bytes")
    else:
        d.signing_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _secret_ok(secret: str) -> bool:
    if not secret.startswith("whsec_"):
        return False
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except ValueError:
        return False
    return 24 <= len(key) <= 64


def _check_trigger(field: str, trigger: delivery_pb2.Trigger) -> None:
    if trigger.kind in (TriggerKind.TRIGGER_KIND_SEGMENT_ENTERED, TriggerKind.TRIGGER_KIND_SEGMENT_EXITED):
        if not trigger.segment_id:
            raise InvalidArgument(f"{field}.segment_id", "is required for a segment trigger")
    elif trigger.kind == TriggerKind.TRIGGER_KIND_EVENT:
        if not trigger.event_name:
            raise InvalidArgument(f"{field}.event_name", "is required for an event trigger")
    else:
        raise InvalidArgument(f"{field}.kind", "must be SEGMENT_ENTERED, SEGMENT_EXITED or EVENT")
    window_of(trigger.quiet_hours, f"{field}.quiet_hours")


def _check_audience_file(d: delivery_pb2.Destination, kind: int, audience_files: bool) -> None:
    if kind != Kind.DESTINATION_KIND_AUDIENCE_SYNC:
        raise InvalidArgument("destination.audience.file_format", "is for audience syncs only")
    if d.audience.file_format not in EXTENSIONS:
        raise InvalidArgument("destination.audience.file_format", "must be CSV or JSONL")
    if d.webhook_url:
        raise InvalidArgument("destination.webhook_url", "must be empty: an audience sync to files posts nothing")
    if not audience_files:
        raise FailedPrecondition(
            "destination.audience.file_format",
            "this deployment has no folder for audience files (MOSAIC_DELIVERY_AUDIENCE_DIR)",
        )


def _check_limits(limits: delivery_pb2.Limits) -> None:
    if limits.rate_per_second < 0:
        raise InvalidArgument("destination.limits.rate_per_second", "must not be negative")
    if not 0 <= limits.concurrency <= 1000:
        raise InvalidArgument("destination.limits.concurrency", "must be between 0 and 1000")
    if not 0 <= limits.max_attempts <= 100:
        raise InvalidArgument("destination.limits.max_attempts", "must be between 0 and 100")
    if not 0 <= limits.timeout_seconds <= 300:
        raise InvalidArgument("destination.limits.timeout_seconds", "must be between 0 and 300")


async def _check_url(url: str, policy: AddressPolicy) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument("destination.webhook_url", "must be an http:// or https:// URL with a host")
    try:
        await policy.check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except Forbidden as error:
        raise InvalidArgument("destination.webhook_url", f"refused: {error}") from None


async def _check_email(email: delivery_pb2.EmailSettings, policy: AddressPolicy) -> None:
    if not email.smtp_host:
        raise InvalidArgument("destination.email.smtp_host", "is required for an e-mail destination")
    if not 0 < email.smtp_port < 65536:
        raise InvalidArgument("destination.email.smtp_port", "must be between 1 and 65535")
    if "@" not in email.from_address:
        raise InvalidArgument("destination.email.from_address", "must be an e-mail address")
    if email.security not in Security.values():
        raise InvalidArgument("destination.email.security", f"unknown security {email.security}")
    if email.username and not email.password:
        raise InvalidArgument("destination.email.password", "is required with username")
    if email.password and not email.username:
        raise InvalidArgument("destination.email.username", "is required with password")
    if email.username and email.security not in (Security.SMTP_SECURITY_STARTTLS, Security.SMTP_SECURITY_IMPLICIT_TLS):
        raise InvalidArgument(
            "destination.email.security",
            "must be STARTTLS or IMPLICIT_TLS with credentials: they never travel in clear",
        )
    try:
        await policy.check_host(email.smtp_host, email.smtp_port)
    except Forbidden as error:
        raise InvalidArgument("destination.email.smtp_host", f"refused: {error}") from None


class DestinationCache:
    """Every destination, re-read every `refresh_seconds`; listeners hear of the set changing."""

    def __init__(self, store: DeliveryStore, refresh_seconds: float = 5.0) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._by_id: dict[str, delivery_pb2.Destination] = {}
        self._listeners: list[Callable[[dict[str, delivery_pb2.Destination]], None]] = []
        self._task: asyncio.Task[None] | None = None

    def get(self, destination_id: str) -> delivery_pb2.Destination | None:
        return self._by_id.get(destination_id)

    def all(self) -> list[delivery_pb2.Destination]:
        return [self._by_id[key] for key in sorted(self._by_id)]

    def listen(self, listener: Callable[[dict[str, delivery_pb2.Destination]], None]) -> None:
        self._listeners.append(listener)

    async def load(self) -> None:
        self._set({d.destination_id: d for d in await self.store.destinations()})

    def put(self, destination: delivery_pb2.Destination) -> None:
        self._set({**self._by_id, destination.destination_id: destination})

    def remove(self, destination_id: str) -> None:
        self._set({k: v for k, v in self._by_id.items() if k != destination_id})

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        await tasks.cancel(self._task)

    def _set(self, by_id: dict[str, delivery_pb2.Destination]) -> None:
        changed = by_id != self._by_id
        self._by_id = by_id
        if changed:
            for listener in self._listeners:
                listener(by_id)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.load()
            except Exception:  # noqa: BLE001 - the store is down: keep serving the last known set
                log.warning("destinations not refreshed", exc_info=True)
