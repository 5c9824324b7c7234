"""Sending e-mail over SMTP with aiosmtplib.

The server's host goes through the SSRF guard and the connection is made to the address the
guard checked, so DNS cannot swap it in between. The delivery id becomes the Message-ID (the
idempotency key a mail system dedupes by) and an `Idempotency-Key` header. A 5xx answer is a
permanent failure (a bounce): `Refused`; a 4xx answer or a connection problem: `Retryable`.
"""

from __future__ import annotations

import re
from email.message import EmailMessage

import aiosmtplib

from delivery_service.ssrf import AddressPolicy, Forbidden
from delivery_service.webhook import Refused, Retryable
from mosaic.delivery.v1 import delivery_pb2

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


def message_of(settings: delivery_pb2.EmailSettings, job: delivery_pb2.DeliveryJob) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.from_address
    message["To"] = job.recipient
    message["Subject"] = job.subject
    message["Message-ID"] = f"<{_UNSAFE.sub('_', job.delivery_id)}@mosaic.delivery>"
    message["Idempotency-Key"] = job.delivery_id
    message.set_content(job.text)
    return message


class SmtpSender:
    def __init__(self, policy: AddressPolicy, timeout: float) -> None:
        self.policy = policy
        self.timeout = timeout

    async def send(self, settings: delivery_pb2.EmailSettings, job: delivery_pb2.DeliveryJob) -> str:
        try:
            address = (await self.policy.check_host(settings.smtp_host, settings.smtp_port))[0]
        except Forbidden as error:
            raise Refused(f"address refused: {error}") from error
        try:
            _, answer = await aiosmtplib.send(
                message_of(settings, job),
                hostname=address,
                port=settings.smtp_port,
                timeout=self.timeout,
                start_tls=False,
                use_tls=False,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [response.code for response in error.recipients]
            detail = f"recipient refused: {'; '.join(str(r) for r in error.recipients)}"
            if all(400 <= code < 500 for code in codes):
                raise Retryable(detail) from error
            raise Refused(detail) from error
        except aiosmtplib.SMTPResponseException as error:
            detail = f"SMTP {error.code}: {error.message}"
            if 400 <= error.code < 500:
                raise Retryable(detail) from error
            raise Refused(detail) from error
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise Retryable(f"{type(error).__name__}: {error}") from error
        return f"SMTP {answer}"

    async def close(self) -> None:
        pass
