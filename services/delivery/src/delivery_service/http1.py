"""A small HTTP/1.1 client for what delivery sends: a POST with a body, the answer's status and
Retry-After, over connections kept alive per destination.

Why not aiohttp's client: a webhook POST cost it ~120 µs of CPU (request and response objects,
header multidicts, URL parsing, a writer task per request); this one costs ~45 µs, and HTTP was
the largest share of a delivery's CPU once consent answers were kept (bench/delivery.py).

What it does and does not:
- Every new connection resolves its host (the answer kept `dns_seconds`, 10 s) and refuses it
  unless every address passes the SSRF policy, then connects to one of those checked
  addresses, so DNS cannot point it elsewhere between the check and the connection.
- One request at a time per connection, no pipelining. A connection goes back to the pool only
  once its answer has been read whole (Content-Length, chunked, or none for 1xx/204/304), the
  server did not ask to close it and sent nothing more; idle ones are closed after
  `idle_seconds` (15 s, under common server keep-alive timeouts).
- A POST on a kept-alive connection that the server closed meanwhile (the race every keep-alive
  client has) is sent once more on a new connection when nothing came back at all: the request
  carries its idempotency key, and aiohttp would report the same race as a failure.
- An answer is read up to 64 KiB of head and 1 MiB of body (the rest is not read: the
  connection is closed). Redirects are the caller's to refuse; nothing is decompressed.
- https verifies the certificate and host name against the system's trust store.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from delivery_service.ssrf import AddressPolicy

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
_TLS: ssl.SSLContext | None = None


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x this client can read."""


class Closed(ConnectionError):
    """The connection closed before a whole answer came."""

    def __init__(self, detail: str, nothing_came: bool) -> None:
        super().__init__(detail)
        self.nothing_came = nothing_came


@dataclass(frozen=True)
class Url:
    """A URL as a request needs it, parsed once."""

    tls: bool
    host: str
    port: int
    target: bytes  # path and query
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> Url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        # What is not ASCII is percent-encoded, as browsers do; what is encoded already stays.
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe="/:@!$&'()*+,;=?%")
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        header = shown if parts.port is None else f"{shown}:{port}"
        return cls(tls, host, port, target.encode("ascii"), header.encode("idna" if not host.isascii() else "ascii"))


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: str | None


class _Connection(asyncio.Protocol):
    """One connection: a request written, its answer parsed as it comes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[Answer, bool]] | None = None
        self._received = False
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._retry_after: str | None = None
        self._keep = False
        self._mode = ""  # "" (head), "length", "chunk-size", "chunk-data", "trailers", "close"
        self._left = 0
        self._body = 0

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # nothing was asked: a server that talks out of turn is not reused
            return
        self._received = True
        self._buffer += data
        try:
            self._parse()
        except (ProtocolError, ValueError) as error:
            self._fail(ProtocolError(str(error)))

    def eof_received(self) -> bool:
        return False  # close our end too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._mode == "close":  # a body read until the end: this is its end
            self._waiter.set_result((Answer(self._status, self._retry_after), False))
            return
        detail = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        self._waiter.set_exception(Closed(detail, nothing_came=not self._received))

    def exchange(self, data: bytes) -> asyncio.Future[tuple[Answer, bool]]:
        """Write a request; the future's answer and whether the connection may be reused."""
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._received = False
        self._reset()
        self.transport.write(data)
        return self._waiter

    def done_with(self) -> None:
        """The caller has its answer (or gave up): the connection is free for the next."""
        self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # nothing of ours is left to flush

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    def _finish(self) -> None:
        keep = self._keep and not self._buffer
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((Answer(self._status, self._retry_after), keep))
        if not keep:
            self.close()

    def _parse(self) -> None:
        while True:
            if self._mode == "":
                end = self._buffer.find(b"\r\n\r\n")
                if end > MAX_HEAD or (end < 0 and len(self._buffer) > MAX_HEAD):
                    raise ProtocolError(f"answer head longer than {MAX_HEAD} bytes")
                if end < 0:
                    return
                head = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                if self._head(head):
                    return self._finish()
            elif self._mode == "length":
                taken = min(self._left, len(self._buffer))
                del self._buffer[:taken]
                self._left -= taken
                if self._left == 0:
                    return self._finish()
                return
            elif self._mode == "close":
                self._body += len(self._buffer)
                self._buffer.clear()
                if self._body > MAX_BODY:
                    self._keep = False
                    return self._finish()
                return
            elif self._mode == "chunk-size":
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > 1024:
                        raise ProtocolError("chunk size line too long")
                    return
                size = int(bytes(self._buffer[:end]).split(b";", 1)[0].strip(), 16)
                del self._buffer[: end + 2]
                if size < 0:
                    raise ProtocolError("negative chunk size")
                self._mode, self._left = ("trailers", 0) if size == 0 else ("chunk-data", size + 2)
            elif self._mode == "chunk-data":
                taken = min(self._left, len(self._buffer))
                del self._buffer[:taken]
                self._left -= taken
                self._body += taken
                if self._body > MAX_BODY:
                    self._keep = False
                    return self._finish()
                if self._left:
                    return
                self._mode = "chunk-size"
            elif self._mode == "trailers":
                if self._buffer.startswith(b"\r\n"):
                    del self._buffer[:2]
                    return self._finish()
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD:
                        raise ProtocolError("trailers too long")
                    return
                del self._buffer[: end + 4]
                return self._finish()

    def _head(self, head: bytes) -> bool:
        """Read an answer's head; True when the answer has no body (it is complete)."""
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or len(rest) < 3 or not rest[:3].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(rest[:3])
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("the server switched protocols")
            return False  # an interim answer (100 Continue, 103): the real one follows
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"not a header line: {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name in fields and name == "content-length" and fields[name] != value:
                raise ProtocolError("conflicting Content-Length")
            fields[name] = f"{fields[name]}, {value}" if name in fields and name != "content-length" else value
        self._status = status
        self._retry_after = fields.get("retry-after")
        connection = {token.strip().lower() for token in fields.get("connection", "").split(",")}
        self._keep = version == "HTTP/1.1" and "close" not in connection
        if status in (204, 304):
            return True
        coding = fields.get("transfer-encoding", "").lower()
        if coding:
            if coding.rsplit(",", 1)[-1].strip() != "chunked":
                self._mode, self._keep = "close", False
                return False
            self._mode = "chunk-size"
            return False
        if "content-length" in fields:
            length = int(fields["content-length"])
            if length < 0:
                raise ProtocolError("negative Content-Length")
            if length > MAX_BODY:
                self._keep = False
                return True  # the status is all we read; the connection is closed
            self._mode, self._left = "length", length
            return length == 0
        self._mode, self._keep = "close", False
        return False


class Pool:
    """One destination's connections, by origin: at most `limit` open at once is the caller's
    to keep (the worker's concurrency bound holds one per send in flight)."""

    def __init__(self, policy: AddressPolicy, dns_seconds: float = 10.0, idle_seconds: float = 15.0) -> None:
        self.policy = policy
        self.dns_seconds = dns_seconds
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple[bool, str, int], deque[_Connection]] = {}
        self._resolved: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._open: set[_Connection] = set()

    async def post(self, url: Url, request: bytes) -> Answer:
        """Send a whole request (head and body); the answer. Raises Forbidden (the address),
        Closed, ProtocolError or OSError; the caller bounds the time."""
        connection = self._take(url)
        if connection is not None:
            try:
                return await self._exchange(url, connection, request)
            except Closed as error:
                if not error.nothing_came:
                    raise
                # The server closed the idle connection as we wrote: once more, on a new one.
        return await self._exchange(url, await self._connect(url), request)

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    def _take(self, url: Url) -> _Connection | None:
        idle = self._idle.get((url.tls, url.host, url.port))
        if not idle:
            return None
        limit = time.monotonic() - self.idle_seconds
        while idle and (idle[0].closed or idle[0].idle_since < limit):  # the oldest first
            self._drop(idle.popleft())
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest to be alive
            if not connection.closed:
                return connection
            self._drop(connection)
        return None

    async def _exchange(self, url: Url, connection: _Connection, request: bytes) -> Answer:
        try:
            answer, keep = await connection.exchange(request)
        except BaseException:  # failed, timed out or cancelled: its state is unknown
            connection.done_with()
            self._drop(connection)
            raise
        connection.done_with()
        if keep and not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault((url.tls, url.host, url.port), deque()).append(connection)
        else:
            self._drop(connection)
        return answer

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def _connect(self, url: Url) -> _Connection:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for address in await self._addresses(url.host, url.port):
            try:
                _, connection = await loop.create_connection(
                    _Connection,
                    address,
                    url.port,
                    ssl=_tls() if url.tls else None,
                    server_hostname=url.host if url.tls else None,
                )
            except OSError as error:
                last = error
                continue
            self._open.add(connection)
            return connection
        assert last is not None, "a host resolves to at least one address"
        raise last

    async def _addresses(self, host: str, port: int) -> list[str]:
        """The host's addresses, every one allowed by the policy (else Forbidden); kept
        `dns_seconds`. A name that does not resolve is an OSError: DNS may be back later."""
        now = time.monotonic()
        kept = self._resolved.get((host, port))
        if kept is not None and kept[0] > now:
            return kept[1]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = self.policy.check_addresses(host, [info[4][0] for info in infos])
        self._resolved[(host, port)] = (now + self.dns_seconds, addresses)
        return addresses


def _tls() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS
