"""Fuzz test of both doors (hypothesis): HTTP bodies and gRPC `Event`s with near-valid values.

Ingestion, identity and profile run in-process on a real nats-server. Whatever comes in, the
answer is 200/400 (HTTP) or a result per event (gRPC), never a 5xx or INTERNAL; and whatever
was accepted goes all the way through: identity and profile ack every message (nothing left
pending, which an event failing in a handler would be) and DEAD_LETTERS stays empty.
"""

from __future__ import annotations

import base64
import itertools
import json
from datetime import datetime

import aiohttp
import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import topics
from mosaic.testing.plugin import eventually

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
DOWNSTREAM = {topics.EVENTS_RAW: "identity", topics.EVENTS_RESOLVED: "profile"}
serial = itertools.count()


def often(good, *bad):
    """Mostly `good` (3 in 4), else one of `bad`: a batch of several fields must pass often
    enough to send events on through identity and profile."""
    choices = [*bad, *[good] * (3 * len(bad))]
    return st.integers(0, len(choices) - 1).flatmap(lambda index: choices[index])


# Near-valid values: what a real id, time or number looks like, and its edges.
junk = st.sampled_from(["", "   ", "null", "NULL", "0", "000", "-1", "undefined", "none", "nan", "anonymous", " null "])
controls = st.sampled_from(["a\x00b", "a\nb", "a\r\nb", "\t", "x\x7f", "\x1b[31m"])
printable = st.characters(codec="utf-8", exclude_characters="".join(map(chr, [*range(32), 127])))
real = st.one_of(st.text(printable, min_size=1, max_size=12), st.sampled_from(["ada", " ada ", "i" * 511, "i" * 512]))
long_text = st.sampled_from([513, 2000, 20000]).map(lambda n: "i" * n)
ids = often(real, junk, controls, long_text)
json_ids = often(ids, st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**63, 2**64]), st.booleans())
EDGES = [
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "1899-12-31T23:59:59Z",
    "1900-01-01T00:00:00Z",
    "2199-12-31T23:59:59+00:00",
    "2200-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "2024-05-01T10:00:00+14:00",
    "2024-05-01T10:00:00-12:00",
    "2024-05-01T10:00:00",
    "2024-02-30T00:00:00Z",
    "yesterday",
]
iso_times = st.one_of(
    st.sampled_from(EDGES),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes(datetime(2000, 1, 1), datetime(2030, 1, 1), timezones=st.timezones()).map(lambda d: d.isoformat()),
)
# JSON number text that Python's own json module cannot say (or would say as infinity).
RAW_NUMBERS = [
    "1e400",
    "-1e400",
    "1e-400",
    "7" * 5000,
    "18446744073709551616",
    "-9223372036854775809",
    "1.7976931348623157e308",
    "0.0000000000000000000000001",
    "-0",
]
numbers = often(
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**64), 2**64),
    st.sampled_from(RAW_NUMBERS).map(lambda text: ("raw", text)),
)
keys = often(st.text(printable, max_size=8), controls, st.just(""), long_text)
scalars = st.one_of(st.none(), st.booleans(), numbers, ids)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8
)


def deep(levels: int, as_list: bool) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value] if as_list else {"d": value}
    return value


objects = often(
    st.dictionaries(keys, values, max_size=4),
    st.builds(lambda n, lists: {"deep": deep(n, lists)}, st.sampled_from([22, 23, 24, 25, 30, 200]), st.booleans()),
)


@st.composite
def messages(draw) -> dict:
    kind = draw(st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]))
    message: dict = {"type": kind, "messageId": f"fuzz-{next(serial)}"}
    for key, chance in (("userId", 0.8), ("anonymousId", 0.5)):
        if draw(st.floats(0, 1)) < chance:
            message[key] = draw(json_ids)
    message |= {
        "track": {"event": draw(ids)},
        "alias": {"previousId": draw(json_ids)},
        "group": {"groupId": draw(json_ids)},
    }.get(kind, {})
    for key in draw(st.sets(st.sampled_from(["properties", "traits", "context"]), max_size=2)):
        message[key] = draw(objects)
    if draw(st.booleans()):
        message.setdefault("traits", {})["email"] = draw(ids)
    if draw(st.booleans()):
        message.setdefault("context", {})["device"] = {"id": draw(json_ids)}
    for key in draw(st.sets(st.sampled_from(["timestamp", "sentAt", "originalTimestamp"]))):
        message[key] = draw(iso_times)
    return message


def encode(value: object) -> bytes:
    """JSON, with ("raw", text) numbers written as their text."""
    raw: list[str] = []

    def mark(item: object) -> object:
        if isinstance(item, tuple) and item[:1] == ("raw",):
            raw.append(item[1])
            return f"\u0000raw{len(raw) - 1}\u0000"
        if isinstance(item, dict):
            return {key: mark(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [mark(inner) for inner in item]
        return item

    text = json.dumps(mark(value))
    for index, number in enumerate(raw):
        text = text.replace(json.dumps(f"\u0000raw{index}\u0000"), number)
    return text.encode()


bodies = st.lists(messages(), min_size=1, max_size=3).map(lambda batch: {"batch": batch})


# gRPC: Events as a program would build them, with the protobuf types' own edges.
stamps = often(
    st.builds(timestamp_pb2.Timestamp, seconds=st.integers(946684800, 1893456000), nanos=st.integers(0, 999_999_999)),
    st.builds(
        timestamp_pb2.Timestamp,
        seconds=st.sampled_from(
            [
                0,
                1,
                -1,
                2**62,
                -(2**62),
                2**63 - 1,
                -(2**63),
                253402300799,
                253402300800,
                -62135596800,
                -62135596801,
                7258118400,
                -2208988800,
            ]
        ),
        nanos=st.sampled_from([0, 999_999_999, -1, 1_000_000_000]),
    ),
    st.builds(timestamp_pb2.Timestamp, seconds=st.integers(-(2**40), 2**40), nanos=st.integers(0, 999_999_999)),
)
struct_numbers = often(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([float("inf"), float("nan")]))
struct_values = st.recursive(
    st.one_of(st.none(), st.booleans(), struct_numbers, ids),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
struct_objects = often(
    st.dictionaries(keys, struct_values, max_size=4),
    st.builds(lambda n, lists: {"deep": deep(n, lists)}, st.sampled_from([23, 24, 25, 30]), st.booleans()),
)


@st.composite
def events(draw) -> event_pb2.Event:
    event = event_pb2.Event(
        type=draw(often(st.sampled_from(list(event_pb2.EventType.values())[1:]), st.sampled_from([0, 99]))),
        message_id=draw(st.one_of(st.just(f"fuzz-g-{next(serial)}"), ids)),
    )
    for name in ("user_id", "anonymous_id", "event", "name", "previous_id", "group_id"):
        if name in ("user_id", "event", "previous_id", "group_id") or draw(st.booleans()):
            setattr(event, name, draw(ids))
    for name in ("properties", "traits", "context"):
        if draw(st.booleans()):
            _update(getattr(event, name), draw(struct_objects))
    for name in ("timestamp", "sent_at", "received_at", "original_timestamp"):
        if draw(st.integers(0, 2)) == 0:
            getattr(event, name).CopyFrom(draw(stamps))
    return event


def _update(struct: struct_pb2.Struct, value: dict) -> None:
    try:
        struct.update(value)
    except (ValueError, TypeError):
        pass  # a value protobuf itself cannot hold is no input to the door


@pytest.fixture
async def pipeline(start_services):
    return await start_services("ingestion", "identity", "profile")


@pytest.fixture
async def http(pipeline):
    """A session on the HTTP door with the write key of a source created for it."""
    async with grpc.aio.insecure_channel(pipeline.address("ingestion")) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        answer = await stub.CreateSource(pb.CreateSourceRequest(source=source_pb2.Source(source_id="fuzz-http")))
    auth = "Basic " + base64.b64encode(f"{answer.source.write_keys[0].secret}:".encode()).decode()
    url = f"http://127.0.0.1:{pipeline.built['ingestion'].http_port}"
    async with aiohttp.ClientSession(base_url=url, headers={"Authorization": auth}) as session:
        yield session


async def drained(pipeline) -> None:
    """Everything accepted went through identity and profile (acked), and none was dead-lettered."""
    await eventually(lambda: _nothing_left(pipeline), timeout=30)
    assert await pipeline.dead_letters() == 0


async def _nothing_left(pipeline) -> bool:
    return await pipeline.backlog(DOWNSTREAM) == 0


@FUZZ
@given(body=bodies)
async def test_the_http_door_answers_200_or_400_and_what_it_accepts_goes_through(pipeline, http, body):
    data = encode(body)
    async with http.post("/v1/batch", data=data) as response:
        status, answer = response.status, await response.json()
    assert status in (200, 400), (status, answer, data[:500])
    note(f"HTTP {status}")
    if status == 400:
        for error in answer["errors"]:
            assert error["field"] and error["rule"] and len(error["rule"]) < 400, error
            assert "Traceback" not in error["rule"] and "sys." not in error["rule"]
    await drained(pipeline)


@FUZZ
@given(batch=st.lists(events(), min_size=1, max_size=3))
async def test_the_grpc_door_answers_per_event_and_what_it_accepts_goes_through(pipeline, batch):
    async with grpc.aio.insecure_channel(pipeline.address("ingestion")) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        try:
            answer = await stub.Ingest(pb.IngestRequest(source_id="fuzz", events=batch), timeout=20)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
            answer = None
    if answer is not None:
        assert len(answer.results) == len(batch)
        for result in answer.results:
            note(pb.EventStatus.Name(result.status))
            assert result.status in (pb.EVENT_STATUS_ACCEPTED, pb.EVENT_STATUS_DUPLICATE, pb.EVENT_STATUS_REJECTED)
            if result.status == pb.EVENT_STATUS_REJECTED:
                assert result.field and result.reason and len(result.reason) < 400
    await drained(pipeline)
