"""Input bounds of every RPC: the walk of the service descriptors with extreme values.

Each service runs in-process on a real nats-server (with the services it calls). For every
RPC it registered, requests are built from the request's descriptor, one per kind of extreme
value put into every scalar field at once (and into the fields of nested messages): empty,
huge and control-character strings, 2^63-1, negatives, far timestamps, unknown enum values,
thousands of repeated items. Each call must end within a deadline with a normal answer,
NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION or an INVALID_ARGUMENT naming a field — never
INTERNAL, UNKNOWN, a timeout or a status the call's own answer made too large.

`WALKED` lists the services the suite holds to this; set `MOSAIC_BOUNDS_SERVICES` (names,
comma-separated, or `all`) to walk others, e.g. while a service is being hardened.
"""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from google.protobuf import descriptor, descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
from mosaic.testing.plugin import eventually

ALL = ("ingestion", "identity", "profile", "segmentation", "consent", "delivery")
WALKED = ("ingestion", "identity", "profile", "segmentation", "consent", "delivery")
DEADLINE = 15.0
NEEDS = {"delivery": ("consent", "delivery")}  # delivery calls consent
ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
}
F = descriptor.FieldDescriptor
INTS = {
    F.TYPE_INT32: 31,
    F.TYPE_SINT32: 31,
    F.TYPE_SFIXED32: 31,
    F.TYPE_INT64: 63,
    F.TYPE_SINT64: 63,
    F.TYPE_SFIXED64: 63,
}
UINTS = {F.TYPE_UINT32: 32, F.TYPE_FIXED32: 32, F.TYPE_UINT64: 64, F.TYPE_FIXED64: 64}
FLOATS = (F.TYPE_DOUBLE, F.TYPE_FLOAT)


def services_to_walk() -> tuple[str, ...]:
    chosen = os.environ.get("MOSAIC_BOUNDS_SERVICES", "")
    if not chosen:
        return WALKED
    return ALL if chosen == "all" else tuple(name.strip() for name in chosen.split(",") if name.strip())


# name → (string, signed int given its bits, unsigned int given its bits, float, seconds of a
# Timestamp, how many items a repeated field gets)
KINDS = {
    "empty": None,
    "huge": ("h" * 200_000, lambda b: 2 ** (b - 1) - 1, lambda b: 2**b - 1, 1e308, 2**62, 1),
    "control": ("a\x00\r\nb", lambda b: 1, lambda b: 1, float("nan"), 253402300800, 1),
    "negative": ("-1", lambda b: -(2 ** (b - 1)), lambda b: 0, float("-inf"), -(2**62), 1),
    "edge": (
        "9" * 40,
        lambda b: 2**62 if b == 63 else 2**30,
        lambda b: 2**62 if b == 64 else 2**31,
        1e-320,
        -62135596801,
        1,
    ),
    "many": ("m", lambda b: 1, lambda b: 1, 1.0, 1700000000, 5000),
    "plain": ("x", lambda b: 1, lambda b: 1, 1.0, 1700000000, 1),
    # Ids of what exists (the test seeds profile "x"), numbers far past it: versions, tokens.
    "existing": ("x", lambda b: 2**62 if b == 63 else 2**30, lambda b: 2**62 if b == 64 else 2**31, 1.0, 2**33, 1),
}


def build(message_class, kind: str, depth: int = 0):
    """A request of `message_class` with every scalar field set to the kind's extreme value."""
    message = message_class()
    values = KINDS[kind]
    if values is None:
        return message
    text, signed, unsigned, real, seconds, count = values
    count = count if depth == 0 else 1  # thousands of items at the top, not thousands of thousands
    full_name = message.DESCRIPTOR.full_name
    if full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        message.seconds = seconds
        return message
    if full_name == "google.protobuf.Struct":
        message.update({text[:1000]: text, "n": real if real == real else 0.0})
        return message
    if full_name in ("google.protobuf.Any", "google.protobuf.Value", "google.protobuf.ListValue"):
        return message
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            if key_field.type == F.TYPE_STRING and value_field.message_type is None:
                getattr(message, field.name)[text[:1000]] = _scalar(value_field, values)
            continue
        if field.type == F.TYPE_MESSAGE:
            if depth >= 3:
                continue
            child = build(message_factory.GetMessageClass(field.message_type), kind, depth + 1)
            if field.is_repeated:
                getattr(message, field.name).extend([child] * count)
            else:
                getattr(message, field.name).CopyFrom(child)
            continue
        value = _scalar(field, values)
        if field.is_repeated:
            getattr(message, field.name).extend([value] * count)
        else:
            setattr(message, field.name, value)
    return message


def _scalar(field: descriptor.FieldDescriptor, values):
    text, signed, unsigned, real, _, _ = values
    if field.type == F.TYPE_STRING:
        return text
    if field.type == F.TYPE_BYTES:
        return text.encode()
    if field.type == F.TYPE_BOOL:
        return True
    if field.type == F.TYPE_ENUM:
        assert field.enum_type is not None  # an enum field has one
        numbers = [v.number for v in field.enum_type.values]
        return {"huge": 2**31 - 1, "negative": -1, "edge": max(numbers)}.get(_kind_of(values), numbers[-1])
    if field.type in INTS:
        return signed(INTS[field.type])
    if field.type in UINTS:
        return unsigned(UINTS[field.type])
    if field.type in FLOATS:
        return real
    raise AssertionError(f"no extreme value for {field.full_name}")


def _kind_of(values) -> str:
    return next(name for name, kind in KINDS.items() if kind is values)


async def call(channel: grpc.aio.Channel, method: descriptor.MethodDescriptor, request) -> grpc.StatusCode:
    """Call the method with the request, within DEADLINE; returns the status code."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    kwargs = {"request_serializer": type(request).SerializeToString, "response_deserializer": response_class.FromString}
    try:
        if method.client_streaming:
            stub = channel.stream_unary(path, **kwargs)
            await stub(iter([request, request]), timeout=DEADLINE)
        elif method.server_streaming:
            stub = channel.unary_stream(path, **kwargs)
            count = 0
            async for _ in stub(request, timeout=DEADLINE):
                count += 1
                if count >= 100:
                    break
        else:
            await channel.unary_unary(path, **kwargs)(request, timeout=DEADLINE)
    except grpc.aio.AioRpcError as error:
        return _checked(error)
    return grpc.StatusCode.OK


class Finding(Exception):
    pass


def _checked(error: grpc.aio.AioRpcError) -> grpc.StatusCode:
    code = error.code()
    if code not in ANSWERS:
        raise Finding(f"{code.name}: {(error.details() or '')[:200]}")
    if len(error.details() or "") > 2000:
        raise Finding(f"{code.name} echoes {len(error.details())} characters of input")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(error)
        named: list[str] = []
        for detail in status.details if status else []:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                named.extend(v.field for v in bad.field_violations if v.field)
        if not named:
            raise Finding(f"INVALID_ARGUMENT naming no field: {error.details()[:200]}")
    return code


async def walk(address: str, service_names: list[str]) -> tuple[list[str], int]:
    """Every RPC of the named services with every kind of extreme request; the findings and
    how many calls were made."""
    pool = descriptor_pool.Default()
    findings, calls = [], 0
    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        for service_name in service_names:
            for method in pool.FindServiceByName(service_name).methods:
                request_class = message_factory.GetMessageClass(method.input_type)
                for kind in KINDS:
                    try:
                        request = build(request_class, kind)
                    except (ValueError, TypeError) as error:
                        findings.append(f"{method.full_name} [{kind}]: request not buildable: {error}")
                        continue
                    calls += 1
                    try:
                        await asyncio.wait_for(call(channel, method, request), DEADLINE + 5)
                    except Finding as finding:
                        findings.append(f"{method.full_name} [{kind}]: {finding}")
                    except asyncio.TimeoutError:
                        findings.append(f"{method.full_name} [{kind}]: no answer within {DEADLINE + 5} s")
    return findings, calls


@pytest.mark.parametrize("service", services_to_walk())
async def test_every_rpc_answers_extreme_inputs_with_a_named_error_or_an_answer(start_services, service):
    started = await start_services(*NEEDS.get(service, (service,)))
    runtime = started.services[service].runtime
    if service == "profile":
        await seed_profile(runtime.bus, started.address(service))
    findings, calls = await walk(started.address(service), runtime.service_names)
    assert not findings, "\n".join(findings)
    rpcs = sum(len(descriptor_pool.Default().FindServiceByName(name).methods) for name in runtime.service_names)
    assert calls == rpcs * len(KINDS) and rpcs >= 3


async def seed_profile(bus, address: str) -> None:
    """Profile "x" with a few versions, so the walk reaches past the checks of what exists."""
    for n in range(3):
        event = event_pb2.Event(
            type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=f"seed-{n}", user_id="x", source_id="seed"
        )
        event.traits.update({"n": n})
        event.timestamp.GetCurrentTime()
        event.received_at.GetCurrentTime()
        await bus.publish(
            topics.EVENTS_RESOLVED, "x", resolved_pb2.ResolvedEvent(profile_id="x", event=event), f"seed-{n}"
        )
    async with grpc.aio.insecure_channel(address) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)

        async def seeded() -> bool:
            try:
                answer = await stub.GetProfile(profile_service_pb2.GetProfileRequest(profile_id="x"))
            except grpc.aio.AioRpcError:
                return False
            return answer.profile.version == 3

        await eventually(seeded)
