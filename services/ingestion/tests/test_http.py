"""The Segment-compatible HTTP API in-process on a real nats-server: every rule and limit."""

from __future__ import annotations

import base64
import gzip
import json
import time

import aiohttp
import pytest

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import source_pb2

T = event_pb2.EventType


@pytest.fixture
async def web(ingestion, create_source):
    key = await create_source("web")
    async with aiohttp.ClientSession(base_url=ingestion.http_url) as session:
        yield Client(session, key)


class Client:
    def __init__(self, session: aiohttp.ClientSession, key: str) -> None:
        self.session = session
        self.key = key

    async def post(
        self,
        path: str,
        body,
        *,
        key: str | None = None,
        gzipped: bool = False,
        raw: bool = False,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict, dict]:
        data = body if raw else json.dumps(body).encode()
        headers = dict(headers or {})
        if gzipped:
            data = gzip.compress(data)
            headers["Content-Encoding"] = "gzip"
        auth = self.key if key is None else key
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth}:".encode()).decode()
        async with self.session.post(path, data=data, headers=headers) as response:
            return response.status, await response.json(content_type=None), dict(response.headers)


def track(**fields):
    return {"userId": "ada", "event": "Clicked", **fields}


def nested(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"inner": value}
    return value


async def test_a_track_call_is_stored_with_the_segment_envelope(stored, web):
    status, body, _ = await web.post(
        "/v1/track",
        track(
            messageId="m-1",
            properties={"plan": "pro", "seats": 3},
            context={"ip": "1.2.3.4"},
            integrations={"All": False},
            timestamp="2024-05-01T10:00:00Z",
        ),
    )
    assert (status, body) == (200, {"success": True})
    [(msg_id, event)] = await stored()
    assert msg_id == "web:m-1"
    assert event.type == T.EVENT_TYPE_TRACK and event.user_id == "ada" and event.event == "Clicked"
    assert event.source_id == "web" and event.properties["seats"] == 3 and event.context["ip"] == "1.2.3.4"
    assert event.integrations["All"] is False and event.HasField("received_at")
    assert event.timestamp.ToJsonString() == "2024-05-01T10:00:00Z"  # no sentAt: no correction
    assert event.original_timestamp == event.timestamp


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/identify", {"userId": "ada", "traits": {"email": "ada@example.com"}}),
        ("/v1/page", {"anonymousId": "a-1", "name": "Home", "category": "Docs", "properties": {"url": "/"}}),
        ("/v1/screen", {"userId": "ada", "name": "Settings"}),
        ("/v1/group", {"userId": "ada", "groupId": "acme", "traits": {"plan": "team"}}),
        ("/v1/alias", {"userId": "ada", "previousId": "a-1"}),
    ],
)
async def test_every_single_event_endpoint_stores_its_type(stored, web, path, message):
    status, body, _ = await web.post(path, message)
    assert (status, body) == (200, {"success": True})
    [(_, event)] = await stored()
    assert event.type == T.Value(f"EVENT_TYPE_{path.rsplit('/', 1)[1].upper()}")
    assert len(event.message_id) == 36  # generated: the client sent none
    if path == "/v1/page":
        assert event.properties["category"] == "Docs"


async def test_batch_and_import_take_the_write_key_from_the_body_and_the_batch_context(stored, web):
    now = time.time()
    sent = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 3600)) + "Z"  # client clock 1 h behind
    happened = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 3660)) + "Z"
    batch = {
        "writeKey": web.key,
        "sentAt": sent,
        "context": {"library": {"name": "test"}},
        "batch": [
            {"type": "track", "messageId": "b1", **track(timestamp=happened)},
            {"type": "identify", "messageId": "b2", "userId": "ada", "context": {"ip": "5.6.7.8"}},
        ],
    }
    for path in ("/v1/batch", "/v1/import"):
        assert (await web.post(path, batch, key=""))[:2] == (200, {"success": True})
    events = await stored()
    assert [msg_id for msg_id, _ in events] == ["web:b1", "web:b2"]  # the import was a duplicate
    first, second = events[0][1], events[1][1]
    # The event happened 60 s before it was sent; the skew moves it to about now - 60 s.
    assert abs(first.timestamp.seconds - (now - 60)) < 5
    assert first.original_timestamp.ToJsonString() == happened  # the client's own time is kept
    assert not second.HasField("original_timestamp")  # it sent no time
    assert first.context["library"]["name"] == "test"
    assert second.context["ip"] == "5.6.7.8" and second.context["library"]["name"] == "test"


async def test_an_sdk_that_sends_original_timestamp_gets_it_kept_and_the_time_corrected(stored, web):
    message = track(originalTimestamp="2024-05-01T10:00:00Z", sentAt="2024-05-01T10:00:30Z")
    assert (await web.post("/v1/track", message))[:2] == (200, {"success": True})
    [(_, event)] = await stored()
    assert event.original_timestamp.ToJsonString() == "2024-05-01T10:00:00Z"
    # Sent 30 s after it happened: the event time is 30 s before it was received.
    assert event.received_at.seconds - event.timestamp.seconds == 30


async def test_the_same_message_id_is_accepted_once_per_source(create_source, stored, web):
    other_key = await create_source("app")
    for key in (web.key, web.key, other_key):
        assert (await web.post("/v1/track", track(messageId="same"), key=key))[0] == 200
    assert sorted(msg_id for msg_id, _ in await stored()) == ["app:same", "web:same"]


@pytest.mark.parametrize(
    ("path", "message", "field", "rule"),
    [
        ("/v1/track", {"event": "Clicked"}, "userId", "userId or anonymousId is required"),
        ("/v1/track", {"userId": "ada"}, "event", "is required for track"),
        ("/v1/alias", {"userId": "ada"}, "previousId", "is required for alias"),
        ("/v1/group", {"userId": "ada"}, "groupId", "is required for group"),
        ("/v1/track", track(properties="cheap"), "properties", 'must be an object, got "cheap"'),
        ("/v1/track", track(userId={"id": 1}), "userId", "must be a string, got an object"),
        ("/v1/track", track(event=12), "event", "must be a string, got 12"),
        ("/v1/track", track(timestamp="yesterday"), "timestamp", 'must be an ISO 8601 date-time, got "yesterday"'),
        ("/v1/track", track(timestamp="2024-05-01T10:00:00"), "timestamp", "must have a time zone (Z or an offset)"),
        ("/v1/track", track(messageId="a\nb"), "messageId", "must be at most 512 printable characters"),
        ("/v1/track", [track()], "body", "must be a JSON object"),
        # Deeper would be stored, then fail to parse in every consumer (protobuf's depth limit).
        ("/v1/track", track(properties=nested(25)), "properties", "must nest at most 24 levels"),
        # Times every later stage can fold; a skew correction that cannot overflow (was a 500).
        (
            "/v1/track",
            track(timestamp="9999-01-01T00:00:00Z", sentAt="0001-01-01T00:00:00Z"),
            "timestamp",
            "must be between 1900-01-01 and 2200-01-01 (UTC)",
        ),
        (
            "/v1/track",
            track(timestamp="2150-01-01T00:00:00Z", sentAt="1901-01-01T00:00:00Z"),
            "sentAt",
            "is too far from the time received: the timestamp corrected by it must be between 1900-01-01 and 2200-01-01 (UTC)",
        ),
        # Ids identity could never link are refused here, not dead-lettered there.
        (
            "/v1/identify",
            {"userId": "   "},
            "userId",
            "userId or anonymousId must be a real id, not blank or a placeholder (userId '   ')",
        ),
        (
            "/v1/identify",
            {"userId": "null", "anonymousId": 0},
            "userId",
            "userId or anonymousId must be a real id, not blank or a placeholder (userId 'null' and anonymousId '0')",
        ),
        ("/v1/track", track(event="Clicked\r\nX: 1"), "event", "must not contain control characters (NUL, CR, LF...)"),
        ("/v1/track", track(userId="ada\u0000"), "userId", "must not contain control characters (NUL, CR, LF...)"),
        (
            "/v1/track",
            track(properties={"a\nb": 1}),
            "properties",
            "key 'a\\nb' must not contain control characters (NUL, CR, LF...)",
        ),
    ],
)
async def test_a_bad_event_is_a_400_naming_the_index_field_and_rule(stored, web, path, message, field, rule):
    status, body, _ = await web.post(path, message)
    assert status == 400 and body["success"] is False
    expected = {"field": field, "rule": rule} if field == "body" else {"index": 0, "field": field, "rule": rule}
    assert body["errors"] == [expected]
    assert await stored() == []


async def test_a_batch_with_one_bad_event_stores_nothing_and_names_it(stored, web):
    batch = {"batch": [{"type": "track", **track()}, {"type": "track", "userId": "ada"}, {"type": "teleport"}]}
    status, body, _ = await web.post("/v1/batch", batch)
    assert status == 400
    assert body["errors"] == [
        {"index": 1, "field": "batch[1].event", "rule": "is required for track"},
        {
            "index": 2,
            "field": "batch[2].type",
            "rule": 'must be one of track, identify, page, screen, group, alias, got "teleport"',
        },
    ]
    assert await stored() == []


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (b'{"userId": "ada", "event": ', "must be JSON: Expecting value at line 1 column 28"),
        (b'{"userId": "\xff\xfe", "event": "x"}', "must be UTF-8; byte 12 is not"),
        (b'{"userId": "ada", "event": "x", "properties": {"n": NaN}}', "must be JSON: NaN is not a JSON number"),
        # Limits in the API's words, never Python's (recursion depth, digit limits) or a 500.
        (
            b'{"userId": "ada", "event": "x", "properties": {"n": 1e400}}',
            "must hold numbers a double can hold (magnitude at most 1.8e308); the number at line 1 column 53 is not",
        ),
        (
            b'{"userId": "ada", "event": "x", "properties": {"n": ' + b"7" * 5000 + b"}}",
            "must hold numbers a double can hold (magnitude at most 1.8e308); the number at line 1 column 53 is not",
        ),
        (b'{"p": ' + b"[" * 5000 + b"]" * 5000 + b"}", "must nest at most 24 levels"),
    ],
)
async def test_a_body_that_is_not_utf8_json_is_a_400(web, body, rule):
    status, answer, _ = await web.post("/v1/track", body, raw=True)
    assert status == 400 and answer["errors"] == [{"field": "body", "rule": rule}]


async def test_a_lone_surrogate_escape_is_a_400_not_a_crash(web):
    status, answer, _ = await web.post("/v1/track", b'{"userId": "\\ud800", "event": "x"}', raw=True)
    assert status == 400 and answer["errors"] == [{"field": "body", "rule": "must be JSON: no low surrogate in string"}]


async def test_an_event_over_32_kb_is_refused_naming_its_index(web):
    big = {"type": "track", **track(properties={"blob": "x" * 33_000})}
    status, answer, _ = await web.post("/v1/batch", {"batch": [{"type": "track", **track()}, big]})
    assert status == 400
    assert answer["errors"][0]["index"] == 1 and answer["errors"][0]["rule"].startswith("must be at most 32768 bytes")
    status, answer, _ = await web.post("/v1/track", track(properties={"blob": "x" * 33_000}))
    assert status == 400 and answer["errors"] == [{"field": "body", "rule": "must be at most 32768 bytes"}]


async def test_a_batch_over_500_kb_or_2500_events_is_refused(stored, web):
    heavy = {"batch": [{"type": "track", **track(properties={"blob": "x" * 30_000})} for _ in range(18)]}
    status, answer, _ = await web.post("/v1/batch", heavy)
    assert status == 400 and answer["errors"] == [{"field": "body", "rule": "must be at most 512000 bytes"}]
    many = {"batch": [{"type": "track", **track()} for _ in range(2501)]}
    status, answer, _ = await web.post("/v1/batch", many)
    assert status == 400 and answer["errors"] == [
        {"field": "batch", "rule": "must hold at most 2500 events, holds 2501"}
    ]
    assert await stored() == []


async def test_gzip_bodies_are_read_and_a_gzip_bomb_is_refused_without_inflating_it(stored, web):
    assert (await web.post("/v1/track", track(messageId="z1"), gzipped=True))[:2] == (200, {"success": True})
    bomb = gzip.compress(b'{"batch": [' + b" " * 200_000_000 + b"]}", compresslevel=9)
    assert len(bomb) < 500 * 1024
    started = time.monotonic()
    status, answer, _ = await web.post("/v1/batch", bomb, raw=True, headers={"Content-Encoding": "gzip"})
    assert status == 400 and answer["errors"] == [
        {"field": "body", "rule": "must be at most 512000 bytes once gunzipped"}
    ]
    assert time.monotonic() - started < 2
    status, answer, _ = await web.post("/v1/track", b"not gzip at all", raw=True, headers={"Content-Encoding": "gzip"})
    assert status == 400 and answer["errors"][0]["rule"].startswith("must be valid gzip")
    status, answer, _ = await web.post("/v1/track", track(), headers={"Content-Encoding": "br"})
    assert status == 400 and answer["errors"] == [{"field": "Content-Encoding", "rule": "must be gzip or absent"}]
    assert [m for m, _ in await stored()] == ["web:z1"]


async def test_a_missing_unknown_or_disabled_write_key_is_refused(web, stub):
    assert (await web.post("/v1/track", track(), key=""))[:2] == (
        401,
        {"success": False, "message": "a write key is required: the Basic-auth user name or writeKey in the body"},
    )
    assert (await web.post("/v1/track", track(), key="wk_nobody"))[:2] == (
        401,
        {"success": False, "message": "the write key is unknown or expired"},
    )
    status, _, _ = await web.post("/v1/track", track(), key="", headers={"Authorization": "Basic !!!"})
    assert status == 401
    await stub.UpdateSource(
        pb.UpdateSourceRequest(
            source=source_pb2.Source(source_id="web", disabled=True), update_mask={"paths": ["disabled"]}
        )
    )
    assert (await web.post("/v1/track", track()))[:2] == (
        403,
        {"success": False, "message": "source 'web' is disabled"},
    )


async def test_a_source_over_its_rate_limit_gets_429_with_retry_after(create_source, ingestion, stub):
    key = await create_source("slow", rate_limit=source_pb2.RateLimit(events_per_second=1, burst=5))
    async with aiohttp.ClientSession(base_url=ingestion.http_url) as session:
        client = Client(session, key)
        # Ten events against a burst of five: let in, leaving a debt of five tokens.
        batch = {"batch": [{"type": "track", **track()} for _ in range(10)]}
        assert (await client.post("/v1/batch", batch))[0] == 200
        status, body, headers = await client.post("/v1/track", track())
    assert status == 429 and headers["Retry-After"] == "6" and "rate limit" in body["message"]


async def test_without_nats_the_answer_is_503_with_retry_after(web, nats_server):
    nats_server.stop()
    try:
        status, body, headers = await web.post("/v1/track", track())
    finally:
        nats_server.start()
    assert status == 503 and body["success"] is False and int(headers["Retry-After"]) >= 1


async def test_an_unknown_endpoint_is_a_404(web):
    assert (await web.post("/v1/teleport", track()))[0] == 404
