"""Who is calling, and may they: one interceptor in every service's bootstrap.

Callers authenticate with a bearer token (a JWT signed by a key of the deployment's JWKS, the
way identity providers and service meshes issue them) and/or a client certificate (mutual
TLS; its common name is the caller, and `MOSAIC_AUTH_CERT_SCOPES` maps it to scopes). Each
RPC declares the scope it needs next to it in the protos (`mosaic.auth.v1.access`); a call
without credentials is UNAUTHENTICATED, one without the scope PERMISSION_DENIED naming the
scope. Health and reflection stay open for probes. A method that declares no scope is refused:
the check fails closed, and a test walks every RPC so none ships without one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import jwt
from google.protobuf import descriptor_pool

from mosaic.auth.v1 import options_pb2
from mosaic.platform.config import SecuritySettings
from mosaic.platform.errors import PermissionDenied, Unauthenticated
from mosaic.platform.lru import Lru

if TYPE_CHECKING:
    from google.protobuf.descriptor_pb2 import MethodOptions
    from google.protobuf.internal.extension_dict import _ExtensionFieldDescriptor

log = logging.getLogger("mosaic.auth")

# Probes and tooling: open to every caller (reflection can be turned off in the settings).
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
ALL_SCOPES = "*"
PII_SCOPE = "profiles:read_pii"


@dataclass(frozen=True)
class Caller:
    """An authenticated principal and what it may do."""

    principal: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes


# With authentication off (a local trial), every call is this caller.
TRIAL = Caller("anonymous", frozenset({ALL_SCOPES}))
_caller: ContextVar[Caller] = ContextVar("mosaic_caller", default=TRIAL)


def current_caller() -> Caller:
    """The caller of the RPC being served (TRIAL outside a call or with authentication off)."""
    return _caller.get()


@lru_cache(maxsize=None)
def method_access(full_method: str) -> options_pb2.Access | None:
    """The declared access of `/package.Service/Method`, or None when it declares none."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    try:
        descriptor = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(method)
    except KeyError:
        return None
    if descriptor is None:
        return None
    options = descriptor.GetOptions()
    # protoc's generated stub types the extension as a plain FieldDescriptor
    extension = cast("_ExtensionFieldDescriptor[MethodOptions, options_pb2.Access]", options_pb2.access)
    if not options.HasExtension(extension):
        return None
    access = options.Extensions[extension]
    return access if access.scope else None


def _scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """OAuth 2.0 puts scopes in `scope` (space-separated); some issuers use a `scp` list."""
    scope = claims.get("scope", claims.get("scp", ""))
    items = scope.split() if isinstance(scope, str) else [str(s) for s in scope] if isinstance(scope, list) else []
    return frozenset(items)


class TokenVerifier:
    """Verifies bearer tokens against a JWKS file or URL; a key id it does not know makes it
    read the key set again (at most every 30 s), so keys rotate without a restart."""

    ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
    RELOAD_SECONDS = 30.0

    def __init__(self, source: str, issuer: str, audience: str) -> None:
        self.source = source
        self.issuer = issuer or None
        self.audience = audience
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = float("-inf")
        self._verified: Lru[str, tuple[Caller, float]] = Lru(10_000)

    def _read(self) -> str:
        if self.source.startswith("https://"):
            with urllib.request.urlopen(self.source, timeout=5) as answer:  # noqa: S310 - https only
                return answer.read().decode()
        return Path(self.source).read_text()

    async def _reload(self) -> None:
        if time.monotonic() - self._loaded_at < self.RELOAD_SECONDS:
            return
        self._loaded_at = time.monotonic()
        try:
            key_set = jwt.PyJWKSet.from_json(await asyncio.to_thread(self._read))
        except (OSError, ValueError, jwt.PyJWKSetError) as error:
            log.warning("could not read the key set", extra={"fields": {"source": self.source, "error": str(error)}})
            return
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id}

    async def verify(self, token: str) -> Caller:
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
        except jwt.DecodeError:
            raise Unauthenticated("the bearer token is not a JWT") from None
        if kid not in self._keys:
            await self._reload()
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("the bearer token is signed by a key this deployment does not know")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self.ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the bearer token has expired") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"the bearer token is not valid: {error}") from None
        caller = Caller(str(claims["sub"]), _scopes_of(claims))
        self._verified.put(token, (caller, float(claims["exp"])))
        return caller


def _certificate_scopes(path: str) -> dict[str, frozenset[str]]:
    if not path:
        return {}
    mapping = json.loads(Path(path).read_text())
    return {str(name): frozenset(scopes) for name, scopes in mapping.items()}


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return ""


Admit = Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]


def guarded(handler: grpc.RpcMethodHandler, admit: Admit) -> grpc.RpcMethodHandler:
    """`handler` with `admit(request, context)` awaited before it runs (the request is None for
    client streams). What admit raises reaches the error interceptor outside this one."""
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            await admit(request, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request, context):
            await admit(request, context)
            responses = inner_us(request, context)
            if inspect.isawaitable(responses):
                await responses
                return
            async for response in responses:
                yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests, context):
            await admit(None, context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests, context):
        await admit(None, context)
        async for response in inner_ss(requests, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )


Audit = Callable[[str, Caller, Any], Awaitable[None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call but the open ones, checks the method's scope, records audited
    calls (through `audit`, before the method runs: no record, no access), and makes the caller
    known to the servicer (`current_caller()`)."""

    def __init__(self, security: SecuritySettings, audit: Audit | None = None) -> None:
        self.required = security.auth == "required"
        self.tokens = TokenVerifier(security.jwks, security.issuer, security.audience) if security.jwks else None
        self.certificates = _certificate_scopes(security.cert_scopes)
        self.audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.lstrip("/").rpartition("/")[0] in OPEN_SERVICES:
            return handler
        access = method_access(method)

        async def admit(request: Any, context: grpc.aio.ServicerContext) -> None:
            if not self.required:  # a trial: every caller may do everything, audited all the same
                if access is not None and access.audited and self.audit is not None:
                    await self.audit(method, TRIAL, request)
                return
            if access is None:
                raise PermissionDenied("", f"{method} declares no scope, so nobody may call it")
            caller = await self.authenticate(context)
            if not caller.may(access.scope):
                raise PermissionDenied(access.scope, f"{caller.principal} lacks the scope {access.scope}")
            _caller.set(caller)
            if access.audited and self.audit is not None:
                await self.audit(method, caller, request)

        return guarded(handler, admit)

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        header = _metadata(context, "authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("the authorization header must be `Bearer <token>`")
            if self.tokens is None:
                raise Unauthenticated("this deployment takes no bearer tokens; present a client certificate")
            return await self.tokens.verify(token.strip())
        auth = context.auth_context() or {}
        names = auth.get("x509_common_name") or []
        if names:
            # The TLS handshake verified the chain against MOSAIC_TLS_CLIENT_CA already.
            principal = names[0].decode()
            return Caller(principal, self.certificates.get(principal, frozenset()))
        raise Unauthenticated("no credentials: send `authorization: Bearer <token>` or a client certificate")


def declared_access(services: list[Any]) -> dict[str, options_pb2.Access | None]:
    """Every method of the given service descriptors, `/pkg.Service/Method` -> its access."""
    return {
        f"/{service.full_name}/{method.name}": method_access(f"/{service.full_name}/{method.name}")
        for service in services
        for method in service.methods
    }
