"""Channels from one Mosaic service (or tool) to another, authenticated the way callers are.

TLS when the caller trusts a CA (`MOSAIC_TLS_CA`), with its own certificate as the client
certificate when it has one (mutual TLS); its bearer token (`MOSAIC_AUTH_TOKEN_FILE`, read
again for every call so a rotated token is used at once) in the `authorization` header.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from mosaic.platform.config import SecuritySettings


class _Token(grpc.AuthMetadataPlugin):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            callback((("authorization", f"Bearer {self.path.read_text().strip()}"),), None)
        except OSError as error:
            callback((), error)


class _TokenHeader(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """The token on a plaintext channel (gRPC sends call credentials only over TLS)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.path.read_text().strip()}")]
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_token(details), request)


def channel(
    address: str, security: SecuritySettings, interceptors: Sequence[Any] = (), options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to `address` with this process's credentials."""
    if security.ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(security.ca).read_bytes(),
            private_key=Path(security.tls_key).read_bytes() if security.tls_key else None,
            certificate_chain=Path(security.tls_cert).read_bytes() if security.tls_cert else None,
        )
        if security.token_file:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.metadata_call_credentials(_Token(security.token_file))
            )
        return grpc.aio.secure_channel(address, credentials, options=list(options), interceptors=list(interceptors))
    extra = [_TokenHeader(security.token_file)] if security.token_file else []
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=[*interceptors, *extra])
