"""The rules every door applies to what it takes in, so what one service accepts every later
stage can store and process, and no request can ask for unbounded work.

Pure functions that raise `InvalidArgument` naming the field and the rule. Ingestion applies
them to events whichever door they came in by (HTTP or gRPC); identity and profile to the
requests of their RPCs; identity reads its built-in junk rule from here, so ingestion refuses
an event identity could never resolve by the very same rule.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TypeVar

from google.protobuf import struct_pb2, timestamp_pb2

from mosaic.platform.errors import InvalidArgument

MAX_ID_LENGTH = 512  # ids and names: NATS headers, store keys, log lines
MAX_TYPE_LENGTH = 128  # identifier types
MAX_DEPTH = 24  # JSON levels of an event's objects (Struct nests three protobuf levels a level)
MAX_SHOWN = 80  # characters of a caller's value an error message may repeat
MAX_PAGE_TOKEN = 2**62  # page tokens are versions or microseconds; anything larger was never issued
# Event times a profile can be folded at: the stores' day and month partitions, datetime's
# range (years 1-9999) with room for windows and clock-skew correction, and not absurd.
EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)
EARLIEST_SECONDS = int(EARLIEST.timestamp())
LATEST_SECONDS = int(LATEST.timestamp())
TIME_RULE = f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)"
# Junk that SDKs and forms send in place of an id; matched against the whole (stripped) value,
# any case. Identity never links such a value, so ingestion never accepts an event whose only
# ids are junk.
JUNK_PATTERNS = (r"[0-]*", r"-1", r"null", r"undefined", r"anonymous", r"none", r"nan")
_JUNK = tuple(re.compile(pattern, re.I) for pattern in JUNK_PATTERNS)
# C0 controls and DEL: NUL ends strings in C and in some stores, CR and LF split headers and
# log lines.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
T = TypeVar("T")


def shown(value: str, limit: int = MAX_SHOWN) -> str:
    """A caller's value as an error may repeat it: quoted, and cut after `limit` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def junk_pattern(value: str) -> str | None:
    """The built-in junk pattern a would-be identifier matches (blank counts as ''), or None."""
    stripped = value.strip()
    for pattern in _JUNK:
        if pattern.fullmatch(stripped):
            return pattern.pattern
    return None


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def check_text(field: str, value: str, max_length: int = MAX_ID_LENGTH) -> str:
    """An id or name: at most `max_length` characters, no control characters."""
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters, is {len(value)}")
    if _CONTROL.search(value):
        raise InvalidArgument(field, "must not contain control characters (NUL, CR, LF...)")
    return value


def check_required_text(field: str, value: str, max_length: int = MAX_ID_LENGTH) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    return check_text(field, value, max_length)


def check_timestamp(field: str, stamp: timestamp_pb2.Timestamp) -> None:
    """A time between EARLIEST and LATEST with its nanos in range."""
    if not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument(f"{field}.nanos", "must be between 0 and 999,999,999")
    if not EARLIEST_SECONDS <= stamp.seconds < LATEST_SECONDS:
        raise InvalidArgument(field, TIME_RULE)


def check_struct(field: str, struct: struct_pb2.Struct) -> None:
    """An object of an event: keys without control characters, finite numbers, at most
    MAX_DEPTH levels (as the HTTP door reads JSON)."""
    _check_fields(field, struct, 1)


def _check_fields(field: str, struct: struct_pb2.Struct, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidArgument(field, f"must nest at most {MAX_DEPTH} levels")
    for key, value in struct.fields.items():
        if _CONTROL.search(key):
            raise InvalidArgument(field, f"key {shown(key)} must not contain control characters (NUL, CR, LF...)")
        _check_value(field, value, depth)


def _check_value(field: str, value: struct_pb2.Value, depth: int) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument(field, "must hold finite numbers (not NaN or infinity)")
    elif kind == "struct_value":
        _check_fields(field, value.struct_value, depth + 1)
    elif kind == "list_value":
        if depth + 1 > MAX_DEPTH:
            raise InvalidArgument(field, f"must nest at most {MAX_DEPTH} levels")
        for item in value.list_value.values:
            _check_value(field, item, depth + 1)


def page_size(value: int, default: int, most: int, field: str = "page_size") -> int:
    """A List RPC's page size: `default` for 0, at most `most` (a larger ask gets `most`, as
    AIP-158 says), and never negative."""
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    return min(value or default, most)


def key_token(key: str) -> str:
    """The page token that continues after `key`, the last key of a page (base64url of it)."""
    return base64.urlsafe_b64encode(key.encode()).decode()


def after_key(token: str, field: str = "page_token") -> str:
    """The key a token of `key_token` continues after; '' (from the start) for no token."""
    if not token:
        return ""
    try:
        key = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        key = ""
    if not key or has_control(key):
        raise InvalidArgument(field, "is not a token this service issued")
    return key


def page_by_key(items: Sequence[T], key: Callable[[T], str], size: int) -> tuple[list[T], str]:
    """The page of `items` (in key order, read `size + 1` at most) and the token of the next one."""
    page = list(items[:size])
    return page, key_token(key(page[-1])) if len(items) > size else ""


def page_of(items: Iterable[T], key: Callable[[T], str], size: int, token: str) -> tuple[list[T], str]:
    """A page of a small catalog read whole: the `size` items after the token's key, by key."""
    after = after_key(token)
    return page_by_key(sorted((i for i in items if key(i) > after), key=key)[: size + 1], key, size)


def page_token(token: str, field: str = "page_token") -> int:
    """A page token this platform issued: an integer of magnitude below MAX_PAGE_TOKEN."""
    digits = token[1:] if token.startswith("-") else token
    if not 0 < len(digits) <= 19 or not digits.isascii() or not digits.isdigit() or abs(int(token)) >= MAX_PAGE_TOKEN:
        raise InvalidArgument(field, "is not a token this service issued")
    return int(token)
