"""A real SMTP server (aiosmtpd) on a loopback port, keeping every message it accepts."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: Message


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SmtpReceiver:
    """Accepts mail for anyone, except recipients in `refuse` (answered 550, a bounce)."""

    def __init__(self) -> None:
        self.mails: list[ReceivedMail] = []
        self.refuse: set[str] = set()
        self._lock = threading.Lock()
        self.port = _free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options):  # noqa: N802
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        assert envelope.mail_from is not None and isinstance(envelope.content, bytes)  # DATA follows MAIL; undecoded
        mail = ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
        with self._lock:
            self.mails.append(mail)
        return "250 Message accepted"

    def snapshot(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self.mails)

    def start(self) -> SmtpReceiver:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
