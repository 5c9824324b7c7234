"""Authentication and scopes on a real service (the platform's own AuditService and health),
over real TLS: bearer tokens, mutual TLS, and the refusals each way must give."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from mosaic.audit.v1 import audit_service_pb2 as audit
from mosaic.audit.v1 import audit_service_pb2_grpc
from mosaic.cli import pki as local_pki
from mosaic.platform.server import Service

LIST = audit.ListAuditRecordsRequest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> local_pki.Pki:
    return local_pki.ensure(tmp_path_factory.mktemp("pki"), admin_scopes=["audit:read"])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> local_pki.Pki:
    """A second, unrelated CA and signing key."""
    return local_pki.ensure(tmp_path_factory.mktemp("other-pki"), admin_scopes=["audit:read"])


async def _serve(make_settings, **environ: str) -> Service:
    async def build(runtime) -> None:
        pass

    service = Service(make_settings("probe", **environ), build)
    await service.start()
    return service


@pytest.fixture
async def token_service(make_settings, pki):
    service = await _serve(
        make_settings,
        MOSAIC_AUTH="required",
        MOSAIC_AUTH_JWKS=str(pki.jwks),
        MOSAIC_TLS_CERT=str(pki.cert("consent")),
        MOSAIC_TLS_KEY=str(pki.key("consent")),
    )
    yield service
    await service.stop()


@pytest.fixture
async def mtls_service(make_settings, pki, tmp_path):
    scopes = tmp_path / "cert-scopes.json"
    scopes.write_text(json.dumps({"delivery": ["audit:read"]}))
    service = await _serve(
        make_settings,
        MOSAIC_AUTH="required",
        MOSAIC_TLS_CLIENT_CA=str(pki.ca),
        MOSAIC_AUTH_CERT_SCOPES=str(scopes),
        MOSAIC_TLS_CERT=str(pki.cert("consent")),
        MOSAIC_TLS_KEY=str(pki.key("consent")),
    )
    yield service
    await service.stop()


def _channel(service: Service, pki: local_pki.Pki, cert: str | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.key(cert).read_bytes() if cert else None,
        certificate_chain=pki.cert(cert).read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{service.port}", credentials)


async def _list(channel: grpc.aio.Channel, token: str | None = None):
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return await audit_service_pb2_grpc.AuditServiceStub(channel).ListAuditRecords(LIST, metadata=metadata)


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_a_caller_with_a_token_carrying_the_scope_is_served(token_service, pki):
    async with _channel(token_service, pki) as channel:
        answer = await _list(channel, pki.issue("billing", ["audit:read"]))
    assert list(answer.records) == []


async def test_a_call_without_credentials_is_unauthenticated(token_service, pki):
    async with _channel(token_service, pki) as channel:
        error = await _refused(_list(channel))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no credentials" in error.details()


async def test_a_token_without_the_scope_is_denied_naming_the_scope(token_service, pki):
    async with _channel(token_service, pki) as channel:
        error = await _refused(_list(channel, pki.issue("billing", ["profiles:read"])))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "billing lacks the scope audit:read"
    info = error_details_pb2.ErrorInfo()
    rpc_status.from_call(error).details[0].Unpack(info)
    assert (info.reason, info.metadata["scope"]) == ("MISSING_SCOPE", "audit:read")


async def test_an_expired_token_is_unauthenticated(token_service, pki):
    async with _channel(token_service, pki) as channel:
        error = await _refused(_list(channel, pki.issue("billing", ["audit:read"], expired=True)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "the bearer token has expired"


async def test_a_token_signed_by_another_key_is_unauthenticated(token_service, pki, other_pki):
    forged = other_pki.issue("billing", ["audit:read"])
    async with _channel(token_service, pki) as channel:
        error = await _refused(_list(channel, forged))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert forged not in error.details()


async def test_garbage_in_the_authorization_header_is_unauthenticated_and_not_echoed(token_service, pki):
    async with _channel(token_service, pki) as channel:
        error = await _refused(_list(channel, "secret-looking-garbage"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "secret-looking-garbage" not in error.details()


async def test_health_answers_probes_without_credentials(token_service, pki):
    async with _channel(token_service, pki) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_plaintext_caller_cannot_reach_a_tls_service(token_service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_service.port}") as channel:
        error = await _refused(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_takes_the_caller_from_its_certificate(mtls_service, pki):
    async with _channel(mtls_service, pki, cert="delivery") as channel:
        assert list((await _list(channel)).records) == []
    async with _channel(mtls_service, pki, cert="ingestion") as channel:  # known, but granted nothing
        error = await _refused(_list(channel))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "ingestion lacks the scope audit:read"


async def test_a_certificate_from_another_ca_is_refused_in_the_handshake(mtls_service, pki, other_pki):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=other_pki.key("delivery").read_bytes(),
        certificate_chain=other_pki.cert("delivery").read_bytes(),
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{mtls_service.port}", credentials) as channel:
        error = await _refused(_list(channel, None))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_without_a_client_certificate_mutual_tls_refuses_the_connection(mtls_service, pki):
    async with _channel(mtls_service, pki) as channel:
        error = await _refused(_list(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_reflection_can_be_turned_off(make_settings, pki):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    service = await _serve(make_settings, MOSAIC_GRPC_REFLECTION="false")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            error = await _refused(call.read())
    finally:
        await service.stop()
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_pki_files_are_private(pki):
    assert Path(pki.key("consent")).stat().st_mode & 0o077 == 0


async def test_a_tls_service_answers_probes_in_plaintext_on_its_health_port(make_settings, pki):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    service = await _serve(
        make_settings,
        MOSAIC_AUTH="required",
        MOSAIC_AUTH_JWKS=str(pki.jwks),
        MOSAIC_TLS_CERT=str(pki.cert("consent")),
        MOSAIC_TLS_KEY=str(pki.key("consent")),
        MOSAIC_HEALTH_PORT=str(free),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.health_port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # nothing but health there
                await audit_service_pb2_grpc.AuditServiceStub(channel).ListAuditRecords(LIST)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await service.stop()
