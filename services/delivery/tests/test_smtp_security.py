"""E-mail over STARTTLS or implicit TLS with a login, against a real aiosmtpd server that
requires both, its certificate signed by a CA the test makes (MOSAIC_DELIVERY_SMTP_TLS_CA)."""

from __future__ import annotations

import logging
import socket
import ssl

import pytest

from delivery_service import destinations
from delivery_service.feedback import outcome_event_name
from delivery_service.ssrf import AddressPolicy
from mosaic.cli import pki as local_pki
from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.platform.errors import InvalidArgument
from mosaic.testing.plugin import eventually
from mosaic.testing.smtp import SmtpReceiver

Status = delivery_pb2.DeliveryStatus
Security = delivery_pb2.SmtpSecurity
USER = "mosaic-relay"
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def pki(tmp_path):
    return local_pki.ensure(tmp_path / "pki", [])


def server_context(pki) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 signed by `pki`'s CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert("delivery"), pki.key("delivery"))
    return context


@pytest.fixture
def trusting_the_ca(pki, delivery_env):
    delivery_env["MOSAIC_DELIVERY_SMTP_TLS_CA"] = str(pki.ca)


@pytest.fixture
def smtp_server():
    """Starts SmtpReceivers with the given settings; stops them after the test."""
    started: list[SmtpReceiver] = []

    def start(**settings) -> SmtpReceiver:
        started.append(SmtpReceiver(**settings).start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


def mail_to(port: int, **email) -> delivery_pb2.Destination:
    return delivery_pb2.Destination(
        destination_id="mail",
        kind=delivery_pb2.DESTINATION_KIND_EMAIL,
        segment_id="vip",
        purpose="marketing",
        body_template="Dear {{ first_name }}, you are a VIP now.",
        email=delivery_pb2.EmailSettings(
            smtp_host="127.0.0.1",
            smtp_port=port,
            from_address="news@mosaic.example",
            subject_template="Welcome",
            **email,
        ),
    )


async def delivered(stub, set_traits, membership, consent, profile_id: str = "p-1") -> delivery_pb2.Delivery:
    """Send to p-1 (the destination's segment entered) and return its finished record."""
    await set_traits(profile_id, email="ada@example.com", first_name="Ada")
    await consent(profile_id)
    await membership("vip", profile_id)

    async def finished():
        answer = await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=profile_id))
        return [r for r in answer.deliveries if r.status != Status.DELIVERY_STATUS_QUEUED]

    [record] = await eventually(finished)
    return record


def service_logs(caplog) -> str:
    """Everything the service (and its libraries) logged; not the test's SMTP server's own log."""
    formatter = logging.Formatter()
    return "\n".join(formatter.format(r) for r in caplog.records if not r.name.startswith("mail.log"))


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_starttls_and_a_login_deliver_and_the_password_is_never_shown_nor_logged(
    with_profiles, trusting_the_ca, pki, smtp_server, set_traits, stub, membership, consent, caplog
):
    caplog.set_level(logging.DEBUG)
    server = smtp_server(tls=server_context(pki), login=(USER, PASSWORD))
    destination = mail_to(server.port, security=Security.SMTP_SECURITY_STARTTLS, username=USER, password=PASSWORD)
    created = await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination))
    record = await delivered(stub, set_traits, membership, consent)
    assert record.status == Status.DELIVERY_STATUS_SENT, record.detail
    [mail] = server.snapshot()
    assert mail.recipients == ["ada@example.com"] and mail.message["Idempotency-Key"] == record.delivery_id
    assert (USER, True) in server.logins
    shown = await stub.GetDestination(pb.GetDestinationRequest(destination_id="mail"))
    listed = await stub.ListDestinations(pb.ListDestinationsRequest())
    for answer in (created, shown, listed):
        assert PASSWORD not in str(answer)
    assert shown.destination.email.username == USER and shown.destination.email.password == ""
    assert shown.destination.email.security == Security.SMTP_SECURITY_STARTTLS
    assert caplog.records and PASSWORD not in service_logs(caplog)


# aiosmtpd counts only STARTTLS as TLS, so it warns of AUTH over what is TLS from the start.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_implicit_tls_with_a_login_delivers(
    with_profiles, trusting_the_ca, pki, smtp_server, set_traits, stub, membership, consent
):
    server = smtp_server(tls=server_context(pki), implicit_tls=True, login=(USER, PASSWORD))
    destination = mail_to(server.port, security=Security.SMTP_SECURITY_IMPLICIT_TLS, username=USER, password=PASSWORD)
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination))
    record = await delivered(stub, set_traits, membership, consent)
    assert record.status == Status.DELIVERY_STATUS_SENT, record.detail
    assert len(server.snapshot()) == 1


async def test_a_wrong_password_is_dead_lettered_at_once_naming_authentication(
    with_profiles, trusting_the_ca, pki, smtp_server, set_traits, stub, membership, consent, caplog
):
    caplog.set_level(logging.DEBUG)
    server = smtp_server(tls=server_context(pki), login=(USER, PASSWORD))
    wrong = "not-the-password"
    destination = mail_to(server.port, security=Security.SMTP_SECURITY_STARTTLS, username=USER, password=wrong)
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination))
    record = await delivered(stub, set_traits, membership, consent)
    assert record.status == Status.DELIVERY_STATUS_DEAD_LETTERED and record.attempts == 1  # never retried
    assert "authentication" in record.detail and "535" in record.detail and wrong not in record.detail
    [letter] = (await stub.ListDeadLetters(pb.ListDeadLettersRequest(destination_id="mail"))).dead_letters
    assert "authentication" in letter.last_error
    assert outcome_event_name(record) == "Delivery Failed"  # the recipient did not bounce
    assert server.snapshot() == [] and server.logins and not any(ok for _, ok in server.logins)
    assert wrong not in service_logs(caplog)


async def test_a_certificate_the_deployment_does_not_trust_is_refused_at_once(
    with_profiles, tmp_path, smtp_server, set_traits, stub, membership, consent
):
    stranger = local_pki.ensure(tmp_path / "other-pki", [])  # no MOSAIC_DELIVERY_SMTP_TLS_CA for it
    server = smtp_server(tls=server_context(stranger), login=(USER, PASSWORD))
    destination = mail_to(server.port, security=Security.SMTP_SECURITY_STARTTLS, username=USER, password=PASSWORD)
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination))
    record = await delivered(stub, set_traits, membership, consent)
    assert record.status == Status.DELIVERY_STATUS_DEAD_LETTERED and record.attempts == 1
    assert "TLS with 127.0.0.1 failed" in record.detail and "CERTIFICATE_VERIFY_FAILED" in record.detail
    assert server.logins == [] and server.snapshot() == []


async def test_starttls_asked_of_a_server_without_it_is_refused_never_sent_in_clear(
    with_profiles, smtp_receiver, set_traits, stub, membership, consent
):
    destination = mail_to(smtp_receiver.port, security=Security.SMTP_SECURITY_STARTTLS)
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination))
    record = await delivered(stub, set_traits, membership, consent)
    assert record.status == Status.DELIVERY_STATUS_DEAD_LETTERED and record.attempts == 1
    assert "STARTTLS" in record.detail
    assert smtp_receiver.snapshot() == []


async def test_a_server_that_does_not_answer_is_retried_until_the_budget_is_spent(
    with_profiles, set_traits, stub, membership, consent
):
    destination = mail_to(free_port(), security=Security.SMTP_SECURITY_STARTTLS, username=USER, password=PASSWORD)
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination))
    record = await delivered(stub, set_traits, membership, consent)
    assert record.status == Status.DELIVERY_STATUS_DEAD_LETTERED
    assert record.attempts == 3 and "ConnectionRefusedError" in record.detail  # MOSAIC_DELIVERY_MAX_ATTEMPTS


@pytest.mark.parametrize(
    ("email", "field", "rule"),
    [
        ({"security": Security.SMTP_SECURITY_STARTTLS, "username": USER}, "destination.email.password", "username"),
        ({"security": Security.SMTP_SECURITY_STARTTLS, "password": PASSWORD}, "destination.email.username", "password"),
        (
            {"security": Security.SMTP_SECURITY_NONE, "username": USER, "password": PASSWORD},
            "destination.email.security",
            "never travel in clear",
        ),
        ({"username": USER, "password": PASSWORD}, "destination.email.security", "never travel in clear"),
        ({"security": 9}, "destination.email.security", "unknown"),
    ],
)
async def test_half_credentials_and_credentials_in_clear_are_refused_naming_the_field(email, field, rule):
    with pytest.raises(InvalidArgument) as refused:  # INVALID_ARGUMENT, with the field, over gRPC
        await destinations.validate(mail_to(2525, **email), AddressPolicy(["loopback"]))
    assert refused.value.field == field and rule in refused.value.rule and PASSWORD not in str(refused.value)
