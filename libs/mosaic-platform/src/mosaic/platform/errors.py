"""Domain errors, and the one interceptor that turns them into gRPC status codes with details.

A servicer raises; it never sets a code itself. Bus consumers read the same errors:
`Unavailable` is retried, `InvalidArgument` is a poison message.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger("mosaic.errors")
# What an error may repeat of a caller's value (a name, an id), and of a rule: a status travels
# in the trailers, which clients cap at 8-16 KB, and its text goes into log lines.
MAX_ECHO = 200
MAX_RULE = 1000


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class DomainError(Exception):
    """Base of the errors a caller is told about; the message is safe to show."""

    code = grpc.StatusCode.UNKNOWN

    def details(self) -> list[Any]:
        return []


class InvalidArgument(DomainError):
    """A field of the request broke a rule."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, rule: str) -> None:
        field, rule = clip(field), clip(rule, MAX_RULE)
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def details(self) -> list[Any]:
        violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.rule)
        return [error_details_pb2.BadRequest(field_violations=[violation])]


class NotFound(DomainError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, resource_type: str, name: str) -> None:
        name = clip(name)
        super().__init__(f"{resource_type} {name!r} not found")
        self.resource_type = resource_type
        self.name = name

    def details(self) -> list[Any]:
        return [error_details_pb2.ResourceInfo(resource_type=self.resource_type, resource_name=self.name)]


class AlreadyExists(DomainError):
    """A resource with that name already exists; `description` may say how it differs."""

    code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, resource_type: str, name: str, description: str = "") -> None:
        name, description = clip(name), clip(description, MAX_RULE)
        super().__init__(f"{resource_type} {name!r} already exists" + (f", {description}" if description else ""))
        self.resource_type = resource_type
        self.name = name
        self.description = description

    def details(self) -> list[Any]:
        return [
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type, resource_name=self.name, description=self.description
            )
        ]


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the request."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, subject: str, rule: str) -> None:
        subject, rule = clip(subject), clip(rule, MAX_RULE)
        super().__init__(f"{subject}: {rule}")
        self.subject = subject
        self.rule = rule

    def details(self) -> list[Any]:
        violation = error_details_pb2.PreconditionFailure.Violation(
            type="STATE", subject=self.subject, description=self.rule
        )
        return [error_details_pb2.PreconditionFailure(violations=[violation])]


class Unavailable(DomainError):
    """A dependency (NATS, the store, another service) is unreachable; retrying may succeed."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, dependency: str, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(f"{dependency} unavailable: {reason}")
        self.dependency = dependency
        self.retry_after = retry_after

    def details(self) -> list[Any]:
        seconds = int(self.retry_after)
        delay = duration_pb2.Duration(seconds=seconds, nanos=int((self.retry_after - seconds) * 1e9))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


def to_status(error: DomainError) -> grpc.Status:
    """The rich gRPC status (google.rpc.Status in the trailers) for a domain error."""
    details = []
    for detail in error.details():
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    status = status_pb2.Status(code=error.code.value[0], message=str(error), details=details)
    return rpc_status.to_status(status)


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    if isinstance(error, grpc.aio.AbortError):
        raise error  # the handler aborted with its own status (the health servicer does)
    if isinstance(error, DomainError):
        status = to_status(error)
    else:
        # An unexpected error is a bug: log it whole, tell the caller nothing internal.
        log.exception("unhandled error in %s", method)
        status = rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions raised by servicers to status codes with google.rpc error details."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                try:
                    return await inner(request, context)
                except Exception as error:  # noqa: BLE001 - mapped, never swallowed
                    await _abort(context, error, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests, context):
                try:
                    return await inner_su(requests, context)
                except Exception as error:  # noqa: BLE001
                    await _abort(context, error, method)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):
                try:
                    responses = inner_us(request, context)
                    if inspect.isawaitable(responses):
                        await responses  # a handler that writes with context.write (health's Watch)
                        return
                    async for response in responses:
                        yield response
                except Exception as error:  # noqa: BLE001
                    await _abort(context, error, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


class Unauthenticated(DomainError):
    """The caller presented no valid credentials. The reason never echoes the credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED

    def details(self) -> list[Any]:
        return [error_details_pb2.ErrorInfo(reason="UNAUTHENTICATED", domain="mosaic")]


class PermissionDenied(DomainError):
    """The caller is known but lacks the scope the method declares."""

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, scope: str, reason: str) -> None:
        super().__init__(reason)
        self.scope = scope

    def details(self) -> list[Any]:
        return [error_details_pb2.ErrorInfo(reason="MISSING_SCOPE", domain="mosaic", metadata={"scope": self.scope})]
