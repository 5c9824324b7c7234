"""The gRPC server interceptor that records `mosaic.rpc.server.duration` for every call.

It is the outermost interceptor, so it sees the status code the error interceptor gave an
exception. Health checks are left out: the probes call them every few seconds and would drown
the calls that matter (they make no spans either, see `server.py`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import grpc

from mosaic.platform import metrics

_UNMEASURED = ("/grpc.health.v1.Health/",)


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    # An exception no interceptor turned into a status: grpc answers UNKNOWN, or the client left.
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times each call and records it by service, method and status code."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_UNMEASURED):
            return handler
        service, method = _split(details.method)

        def record(context: grpc.aio.ServicerContext, started: float, error: BaseException | None) -> None:
            metrics.RPC_DURATION.record(
                time.perf_counter() - started,
                {"rpc.service": service, "rpc.method": method, "rpc.grpc.status_code": _code(context, error)},
            )

        def unary_response(inner):
            async def behaviour(request, context):
                started, error = time.perf_counter(), None
                try:
                    return await inner(request, context)
                except BaseException as caught:
                    error = caught
                    raise
                finally:
                    record(context, started, error)

            return behaviour

        def stream_response(inner):
            async def behaviour(request, context):
                started, error = time.perf_counter(), None
                try:
                    responses = inner(request, context)
                    if inspect.isawaitable(responses):
                        await responses  # a handler that writes with context.write
                        return
                    async for response in responses:
                        yield response
                except BaseException as caught:
                    error = caught
                    raise
                finally:
                    record(context, started, error)

            return behaviour

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary_response(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary_response(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream_response(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                stream_response(handler.stream_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler
