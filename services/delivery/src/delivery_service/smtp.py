"""Sending e-mail over SMTP with aiosmtplib.

The server's host goes through the SSRF guard and the socket is connected to the address the
guard checked, so DNS cannot swap it in between; TLS (STARTTLS or implicit) still verifies the
certificate against the host's name, with the system's trust store and the deployment's CA
(MOSAIC_DELIVERY_SMTP_TLS_CA) when it names one. Credentials log in only over TLS (creation
refuses them without TLS). The delivery id becomes the Message-ID (the idempotency
key a mail system dedupes by) and an `Idempotency-Key` header. How the answer is read:

- a 5xx answer: `Refused` (a recipient's is a bounce); a 4xx answer: `Retryable`.
- credentials refused (535), STARTTLS or AUTH not offered, a certificate that does not verify
  or a handshake that fails: `Refused`, with a detail naming authentication or TLS (not a
  bounce: it says nothing of the recipient). Retrying fails the same way until the
  destination or the server is fixed.
- a connection refused, reset or timing out: `Retryable`.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
from email.message import EmailMessage

import aiosmtplib

from delivery_service.ssrf import AddressPolicy, Forbidden
from delivery_service.webhook import Refused, Retryable
from mosaic.delivery.v1 import delivery_pb2

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")
Security = delivery_pb2.SmtpSecurity
# Connection drops during a handshake: the network's fault, not the server's configuration.
_TRANSIENT_TLS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def message_of(settings: delivery_pb2.EmailSettings, job: delivery_pb2.DeliveryJob) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.from_address
    message["To"] = job.recipient
    message["Subject"] = job.subject
    message["Message-ID"] = f"<{_UNSAFE.sub('_', job.delivery_id)}@mosaic.delivery>"
    message["Idempotency-Key"] = job.delivery_id
    message.set_content(job.text)
    return message


@functools.cache
def tls_context(ca: str) -> ssl.SSLContext:
    """The client context of every SMTP connection: the system's trust store, plus `ca`."""
    context = ssl.create_default_context()
    if ca:
        context.load_verify_locations(cafile=ca)
    return context


def _tls_failure(error: BaseException) -> ssl.SSLError | None:
    """The TLS error behind `error` (aiosmtplib wraps an implicit TLS handshake's), if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return None if isinstance(seen, _TRANSIENT_TLS) else seen
        seen = seen.__cause__
    return None


async def _connect(address: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout)
    except TimeoutError:
        sock.close()
        raise TimeoutError(f"connecting to {address} port {port} timed out after {timeout} s") from None
    except BaseException:
        sock.close()
        raise
    return sock


class SmtpSender:
    def __init__(self, policy: AddressPolicy, timeout: float, ca: str = "") -> None:
        self.policy = policy
        self.timeout = timeout
        self.ca = ca

    async def send(self, settings: delivery_pb2.EmailSettings, job: delivery_pb2.DeliveryJob) -> str:
        try:
            address = (await self.policy.check_host(settings.smtp_host, settings.smtp_port))[0]
        except Forbidden as error:
            raise Refused(f"address refused: {error}") from error
        security = settings.security
        tls = security in (Security.SMTP_SECURITY_STARTTLS, Security.SMTP_SECURITY_IMPLICIT_TLS)
        try:
            context = await asyncio.to_thread(tls_context, self.ca) if tls else None
            # The socket is the connection's from here: closing the connection closes it.
            _, answer = await aiosmtplib.send(
                message_of(settings, job),
                sock=await _connect(address, settings.smtp_port, self.timeout),
                hostname=settings.smtp_host,  # the name the certificate must carry
                port=None,
                timeout=self.timeout,
                start_tls=security == Security.SMTP_SECURITY_STARTTLS,
                use_tls=security == Security.SMTP_SECURITY_IMPLICIT_TLS,
                tls_context=context,
                username=settings.username or None,
                password=settings.password or None,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [response.code for response in error.recipients]
            detail = f"recipient refused: {'; '.join(str(r) for r in error.recipients)}"
            if all(400 <= code < 500 for code in codes):
                raise Retryable(detail) from error
            raise Refused(detail) from error
        except aiosmtplib.SMTPAuthenticationError as error:
            detail = f"SMTP authentication refused ({error.code}): {error.message}"
            if 400 <= error.code < 500:
                raise Retryable(detail) from error
            raise Refused(detail) from error
        except aiosmtplib.SMTPResponseException as error:
            detail = f"SMTP {error.code}: {error.message}"
            if 400 <= error.code < 500:
                raise Retryable(detail) from error
            raise Refused(detail) from error
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            failure = _tls_failure(error)
            if failure is not None:
                raise Refused(f"TLS with {settings.smtp_host} failed: {failure}") from error
            if type(error) is aiosmtplib.SMTPException:  # STARTTLS or AUTH not offered: its setup
                raise Refused(f"SMTP server cannot do what the destination asks: {error}") from error
            raise Retryable(f"{type(error).__name__}: {error}") from error
        return f"SMTP {answer}"

    async def close(self) -> None:
        pass
