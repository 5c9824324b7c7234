"""Property-based tests of the HTTP body handling (hypothesis).

Whatever the body (bytes, any JSON, Segment messages with fields of any type, gzip or not):
the answer is 200 or 400, never an error of the server; 200 means every message is stored
once, 400 means nothing is stored and every problem names its index, field and rule. A
valid message arrives with what it said.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import math
from datetime import datetime

import aiohttp
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.platform import limits, segment_json, topics
from mosaic.platform.errors import InvalidArgument

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
PURE_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=200)
ids = itertools.count()

# Valid messages: keys and names without control characters, ids that are not placeholders,
# times within the range every stage can fold (see mosaic.platform.limits).
text = st.characters(codec="utf-8", exclude_characters="".join(map(chr, [*range(32), 127])))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(text, max_size=8), inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(st.text(text, max_size=10), json_values, max_size=5)
timestamps = st.datetimes(datetime(1900, 1, 2), datetime(2199, 12, 30), timezones=st.timezones()).map(
    lambda d: d.isoformat()
)
names = st.text(text, min_size=1, max_size=30).filter(lambda name: limits.junk_pattern(name) is None)


@st.composite
def valid_messages(draw) -> dict:
    kind = draw(st.sampled_from(sorted(segment_json.TYPES)))
    message = {
        "type": kind,
        "messageId": f"p-{next(ids)}",
        draw(st.sampled_from(["userId", "anonymousId"])): draw(names),
    }
    message |= {
        "track": {"event": draw(names)},
        "alias": {"previousId": draw(names)},
        "group": {"groupId": draw(names)},
    }.get(kind, {})
    for key in draw(st.sets(st.sampled_from(["properties", "traits", "context", "integrations"]))):
        message[key] = draw(objects)
    if draw(st.booleans()):
        message["timestamp"] = draw(timestamps)
    return message


@st.composite
def any_messages(draw) -> dict:
    """Messages whose fields may be missing or of any JSON type."""
    message = draw(valid_messages())
    for key in draw(
        st.sets(
            st.sampled_from(
                [
                    "type",
                    "userId",
                    "anonymousId",
                    "event",
                    "properties",
                    "timestamp",
                    "sentAt",
                    "previousId",
                    "groupId",
                    "context",
                ]
            ),
            max_size=3,
        )
    ):
        message[key] = draw(json_values)
    return message


bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.lists(any_messages(), max_size=5).map(lambda batch: json.dumps({"batch": batch}).encode())
    | st.lists(valid_messages(), max_size=5).map(lambda batch: json.dumps({"batch": batch}).encode())
)


@PURE_SETTINGS
@given(body=bodies)
def test_reading_any_body_either_works_or_names_the_rule(body):
    try:
        data = segment_json.loads(body)
        for message in (
            data.get("batch", []) if isinstance(data, dict) and isinstance(data.get("batch"), list) else [data]
        ):
            segment_json.to_event(message)
    except InvalidArgument as error:
        assert isinstance(error.field, str) and error.rule


@PURE_SETTINGS
@given(message=valid_messages())
def test_a_valid_message_reads_back_as_it_was_sent(message):
    event = segment_json.to_event(message)
    for key, field in segment_json.STRINGS.items():
        if key in message:
            assert getattr(event, field) == message[key]
    for key in ("properties", "traits", "integrations"):
        if key in message:
            assert _same(json_format.MessageToDict(getattr(event, key)), message[key])


def _same(stored, sent) -> bool:
    """Struct keeps numbers as doubles: 3 comes back as 3.0, and that is the same."""
    if isinstance(sent, dict):
        return (
            isinstance(stored, dict) and stored.keys() == sent.keys() and all(_same(stored[k], sent[k]) for k in sent)
        )
    if isinstance(sent, list):
        return isinstance(stored, list) and len(stored) == len(sent) and all(map(_same, stored, sent))
    if isinstance(sent, (int, float)) and not isinstance(sent, bool):
        return math.isclose(stored, sent, rel_tol=1e-15)
    return stored == sent


@pytest.fixture
async def http(ingestion, create_source):
    key = await create_source("prop")
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    async with aiohttp.ClientSession(base_url=ingestion.http_url, headers={"Authorization": auth}) as session:
        yield session


@PROPERTY_SETTINGS
@given(body=bodies, gzipped=st.booleans())
async def test_the_api_answers_200_storing_all_or_400_storing_nothing(ingestion, http, body, gzipped):
    js = ingestion.service.runtime.bus._js
    before = (await js.stream_info(topics.EVENTS_RAW.stream)).state.messages
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    async with http.post("/v1/batch", data=gzip.compress(body) if gzipped else body, headers=headers) as response:
        status, answer = response.status, await response.json()
    after = (await js.stream_info(topics.EVENTS_RAW.stream)).state.messages
    assert status in (200, 400), answer
    if status == 200:
        assert answer == {"success": True}
        assert after - before == len(json.loads(body)["batch"])
    else:
        assert after == before and answer["success"] is False
        for error in answer["errors"]:
            assert isinstance(error["field"], str) and error["rule"]
            if "index" in error:
                assert 0 <= error["index"] < len(json.loads(body)["batch"])
