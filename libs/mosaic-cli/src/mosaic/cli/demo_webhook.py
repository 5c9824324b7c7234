"""The demo's webhook destination (`mosaic run --demo`): an HTTP endpoint on loopback that keeps
every POST it gets, run on a thread so it answers whatever the event loop is doing."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: object


class DemoWebhook:
    """Answers 200 to every POST and keeps what it got, with the raw body. `answer` decides the
    reply; the tests' receiver (mosaic.testing.receivers) overrides it."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[ReceivedRequest] = []
        self.raw_bodies: list[bytes] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server method name
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                status, headers = endpoint.answer()
                endpoint.raw_bodies.append(raw)
                endpoint.requests.append(ReceivedRequest(self.path, dict(self.headers), json.loads(raw or b"null")))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def answer(self) -> tuple[int, dict[str, str]]:
        """The status and headers of the reply to a POST (called on the server's thread)."""
        return 200, {}

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> DemoWebhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
