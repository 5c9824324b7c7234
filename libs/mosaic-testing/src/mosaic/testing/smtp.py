"""A real SMTP server (aiosmtpd) on a loopback port, keeping every message it accepts; it may
require STARTTLS (or speak TLS from the first byte) and a login, as real providers do."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


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
    """Accepts mail for anyone, except recipients in `refuse` (answered 550, a bounce).

    With `tls` (a server context), STARTTLS is required before anything else, or with
    `implicit_tls` the connection is TLS from the start; with `login` (user, password), mail is
    accepted only after that login (over TLS), and `logins` holds every attempt's user and
    whether it succeeded."""

    def __init__(
        self, tls: ssl.SSLContext | None = None, implicit_tls: bool = False, login: tuple[str, str] | None = None
    ) -> None:
        self.mails: list[ReceivedMail] = []
        self.refuse: set[str] = set()
        self.logins: list[tuple[str, bool]] = []
        self._login = login
        self._lock = threading.Lock()
        self.port = _free_port()
        options: dict = {}
        if tls is not None and implicit_tls:
            options.update(ssl_context=tls)
        elif tls is not None:
            options.update(tls_context=tls, require_starttls=True)
        if login is not None:
            # aiosmtpd counts only STARTTLS as TLS; an implicit TLS connection is one already.
            options.update(auth_required=True, auth_require_tls=not implicit_tls, authenticator=self._authenticate)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == self._login
        with self._lock:
            self.logins.append((data.login.decode() if isinstance(data, LoginPassword) else "", ok))
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535

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
