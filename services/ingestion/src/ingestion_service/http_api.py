"""The HTTP API, compatible with the Segment tracking API: SDKs work by changing the host.

`POST /v1/{track,identify,page,screen,group,alias}` take one message, `/v1/batch` (and its
alias `/v1/import`) a batch. The write key is the Basic-auth user name or `writeKey` in the
body; bodies may be gzip. The limits are Segment's: 32 KB an event, 500 KB and 2,500 events
a request. The answers:

- 200 `{"success": true}`: every event of the request is stored in JetStream, or was a
  duplicate, or was quarantined, blocked or suppressed by the source's rules.
- 400: nothing of the request was stored; the body names each event's index, field and rule.
- 401 unknown or expired write key, 403 disabled source, 429 over the source's rate limit
  and 503 when NATS or the store is unreachable, the last two with `Retry-After`. SDKs retry
  429 and 5xx, and the message ids they set make the retry safe.
- 408 when the body did not arrive within the read timeout; 400 for a request HTTP itself
  refuses (a header line over 8 KB...), which says what was wrong but never repeats it.

Client faults and disconnects are logged at INFO, without the request's content: only bugs
are ERRORs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import zlib
from typing import Any

import aiohttp
from aiohttp import web, web_protocol, web_server
from google.protobuf import timestamp_pb2
from opentelemetry import propagate, trace

from ingestion_service import envelope
from ingestion_service.intake import Intake
from ingestion_service.ratelimit import RateLimited, retry_after_header
from ingestion_service.sources import ActiveSource, SourceDirectory
from mosaic.events.v1 import event_pb2
from mosaic.platform import segment_json
from mosaic.platform.errors import InvalidArgument, Unavailable

log = logging.getLogger("ingestion.http")
tracer = trace.get_tracer("ingestion.http")

EVENT_LIMIT = 32 * 1024
REQUEST_LIMIT = 500 * 1024
BATCH_LIMIT = 2500
SINGLE = frozenset(segment_json.TYPES)
MAX_ERRORS = 100
# A full batch is ~40 ms of parsing: other requests get the event loop between slices of it.
SLICE = 100
SEGMENT_NAMES = {
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "previous_id": "previousId",
    "sent_at": "sentAt",
    "group_id": "groupId",
    "message_id": "messageId",
}
_SUCCESS = b'{"success": true}'


class Refusal(Exception):
    """A request refused whole, with its HTTP status and the body that says why."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.close = close
        self.body: dict[str, Any] = {"success": False, "message": message}
        if errors is not None:
            self.body["errors"] = errors
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = {"Retry-After": retry_after_header(self.retry_after)} if self.retry_after is not None else None
        response = web.json_response(self.body, status=self.status, headers=headers)
        if self.close:
            response.force_close()
        return response


def _bad(field: str, rule: str, index: int | None = None) -> Refusal:
    error: dict[str, Any] = {"field": field, "rule": rule}
    if index is not None:
        error = {"index": index, **error}
    return Refusal(400, f"{field}: {rule}", [error])


class _Handler(web_protocol.RequestHandler):
    """aiohttp's connection handler, except for requests its HTTP parser refuses (a header
    over 8 KB, a bad request line): aiohttp logs those as ERROR tracebacks and answers with
    the start of the offending line, Authorization headers included."""

    def handle_error(
        self, request, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        log.info("refused a malformed HTTP request from %s: %s", request.remote, type(exc).__name__ if exc else status)
        response = web.json_response(
            {"success": False, "message": _MALFORMED.get(type(exc).__name__, "malformed HTTP request")}, status=status
        )
        response.force_close()
        return response


_MALFORMED = {
    "LineTooLong": "a request line or header is over 8190 bytes",
    "BadStatusLine": "the request line is not HTTP",
    "BadHttpMethod": "the request line is not HTTP",
    "InvalidHeader": "a header is malformed",
}


class _Server(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class HttpApi:
    def __init__(self, intake: Intake, sources: SourceDirectory, read_timeout: float = 30.0) -> None:
        self.intake = intake
        self.sources = sources
        self.read_timeout = read_timeout
        self._runner: web.AppRunner | None = None

    async def start(self, port: int, host: str = "") -> int:
        """Serve on `host` (empty: every interface) and `port` (0: any free port); returns the port."""
        app = web.Application()
        app.router.add_post("/v1/{kind}", self.handle)
        # Bodies are decompressed here, under the request limit, never by aiohttp unbounded.
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
        await self._runner.setup()
        self._runner.server.__class__ = _Server  # aiohttp has no hook for its connection handler
        site = web.TCPSite(self._runner, host.strip("[]") or "0.0.0.0", port)
        await site.start()
        return self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # lets requests in flight finish
            self._runner = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        kind = "batch" if kind == "import" else kind
        if kind not in SINGLE and kind != "batch":
            return web.json_response({"success": False, "message": f"no endpoint /v1/{kind}"}, status=404)
        with tracer.start_as_current_span(
            f"POST /v1/{kind}",
            context=propagate.extract(request.headers),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": request.path},
        ) as span:
            try:
                stored = await self._ingest(request, kind)
            except Refusal as refusal:
                span.set_attribute("http.response.status_code", refusal.status)
                return refusal.response()
            except (ConnectionError, aiohttp.ClientConnectionResetError) as error:
                # The client went away mid-request: its fault, and nothing to answer.
                log.info("client disconnected during POST /v1/%s: %s", kind, type(error).__name__)
                span.set_attribute("http.response.status_code", 499)
                return web.Response(status=499)  # never sent; re-raising would log an ERROR
            except Exception:  # a bug: logged whole, the client told nothing internal
                log.exception("unhandled error in POST /v1/%s", kind)
                span.set_attribute("http.response.status_code", 500)
                return web.json_response({"success": False, "message": "internal error"}, status=500)
            span.set_attributes({"http.response.status_code": 200, "mosaic.ingest.batch_size": stored})
            return web.Response(body=_SUCCESS, content_type="application/json")

    async def _ingest(self, request: web.Request, kind: str) -> int:
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await read_body(request, REQUEST_LIMIT if kind == "batch" else EVENT_LIMIT)
        except TimeoutError:
            log.info("a body did not arrive within %s s", self.read_timeout)
            raise Refusal(408, f"the body did not arrive within {self.read_timeout:g} s", close=True) from None
        try:
            data = segment_json.loads(body)
        except InvalidArgument as error:
            raise _bad(error.field, error.rule) from None
        if not isinstance(data, dict):
            raise _bad("body", "must be a JSON object")
        active = await self._authenticate(request, data)
        messages, defaults = _messages(data, kind)
        events = await _to_events(messages, kind, defaults, active)
        try:
            self.intake.admit(active, len(events))
            await self.intake.ingest(active, events)
        except RateLimited as limited:
            raise Refusal(429, str(limited), retry_after=limited.retry_after) from None
        except Unavailable as error:
            log.warning("refused a request: %s", error)
            raise Refusal(503, str(error), retry_after=error.retry_after) from None
        return len(events)

    async def _authenticate(self, request: web.Request, data: dict[str, Any]) -> ActiveSource:
        key = _basic_user(request.headers.get("Authorization", ""))
        if not key:
            body_key = data.get("writeKey")
            key = body_key if isinstance(body_key, str) else ""
        if not key:
            raise Refusal(401, "a write key is required: the Basic-auth user name or writeKey in the body")
        try:
            active = await self.sources.by_write_key(key)
        except Unavailable as error:
            raise Refusal(503, str(error), retry_after=error.retry_after) from None
        if active is None:
            raise Refusal(401, "the write key is unknown or expired")
        if active.source.disabled:
            raise Refusal(403, f"source {active.source_id!r} is disabled")
        return active


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, gunzipped if it says so, refused when it is over `limit` either way.

    Decompression stops one byte past the limit, so a gzip bomb costs at most `limit` bytes.
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        raise _bad("Content-Encoding", "must be gzip or absent")
    if request.content_length is not None and request.content_length > limit:
        raise _bad("body", f"must be at most {limit} bytes")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        raw.extend(chunk)
        if len(raw) > limit:
            raise _bad("body", f"must be at most {limit} bytes")
    if encoding != "gzip":
        return bytes(raw)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(bytes(raw), limit + 1)
    except zlib.error as error:
        raise _bad("body", f"must be valid gzip: {error}") from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise _bad("body", f"must be at most {limit} bytes once gunzipped")
    if not inflater.eof or inflater.unused_data:
        raise _bad("body", "must be one complete gzip stream")
    return body


def _basic_user(header: str) -> str:
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return ""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Refusal(401, "the Authorization header is not valid Basic auth") from None
    return decoded.partition(":")[0]


def _messages(data: dict[str, Any], kind: str) -> tuple[list[Any], dict[str, Any] | None]:
    if kind != "batch":
        return [data], None
    batch = data.get("batch")
    if not isinstance(batch, list):
        raise _bad("batch", "is required and must be an array")
    if len(batch) > BATCH_LIMIT:
        raise _bad("batch", f"must hold at most {BATCH_LIMIT} events, holds {len(batch)}")
    defaults = {}
    for key in ("context", "integrations"):
        if data.get(key) is not None:
            if not isinstance(data[key], dict):
                raise _bad(key, "must be an object")
            defaults[key] = data[key]
    if data.get("sentAt") is not None:
        defaults["sentAt"] = data["sentAt"]
    return batch, defaults


async def _to_events(messages: list[Any], kind: str, defaults: dict[str, Any] | None, active: ActiveSource):
    """Every message as a prepared Event, or a 400 naming every message that broke a rule."""
    received_at = timestamp_pb2.Timestamp()
    received_at.GetCurrentTime()
    events: list[event_pb2.Event] = []
    errors: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if index and not index % SLICE:
            await asyncio.sleep(0)
        prefix = f"batch[{index}]" if kind == "batch" else ""
        try:
            event = segment_json.to_event(message, None if kind == "batch" else kind, defaults)
            envelope.prepare(event, active.source_id, received_at, structs_checked=True)
        except InvalidArgument as error:
            if len(errors) < MAX_ERRORS:
                field, rule = _segment_spelling(error.field, error.rule)
                errors.append(
                    {"index": index, "field": ".".join(p for p in (prefix, field) if p) or "body", "rule": rule}
                )
            continue
        events.append(event)
    if errors:
        first = errors[0]
        raise Refusal(400, f"{first['field']}: {first['rule']}", errors)
    return events


def _segment_spelling(field: str, rule: str) -> tuple[str, str]:
    """Envelope rules speak protobuf (user_id); the HTTP client wrote Segment (userId)."""
    if field == "event" and " bytes, is " in rule:
        return "", rule  # the size of the whole event, not of its `event` name
    for proto_name, segment_name in SEGMENT_NAMES.items():
        rule = rule.replace(proto_name, segment_name)
    return SEGMENT_NAMES.get(field, field), rule
