"""The HTTP/1.1 client against real TCP servers that answer as servers in the wild do: kept-alive
and closed connections, chunked and unframed bodies, interim answers, idle connections closed
by the server, answers that never come or do not parse, and the SSRF guard at each connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from delivery_service.http1 import Pool, ProtocolError, Url
from delivery_service.ssrf import AddressPolicy, Forbidden
from delivery_service.webhook import HttpSender, Refused, Retryable

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """A TCP server on loopback; `answer(n)` gives the bytes to write for the n-th request (or
    None to write nothing), `close_after` whether to close the connection after it."""

    def __init__(self, answer: Callable[[int], bytes | None], close_after: Callable[[int], bool] = lambda n: False):
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    @property
    def url(self) -> Url:
        assert self._server is not None
        return Url.parse(f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook?x=1")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                self.requests.append(head + await reader.readexactly(length))
                n = len(self.requests)
                answer = self.answer(n)
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
                if self.close_after(n):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def request(url: Url, body: bytes = b"{}") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        url.target,
        url.host_header,
        len(body),
        body,
    )


LOOPBACK = AddressPolicy(["loopback"])


async def test_a_kept_alive_connection_carries_the_next_request():
    async with Server(lambda n: OK) as server:
        pool = Pool(LOOPBACK)
        for _ in range(3):
            assert (await pool.post(server.url, request(server.url))).status == 200
        await pool.close()
    assert server.connections == 1 and len(server.requests) == 3
    assert server.requests[0].startswith(b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_a_chunked_answer_with_trailers_is_read_whole_and_the_connection_reused():
    chunked = (
        b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n4;x=y\r\nbusy\r\n0\r\nX-T: 1\r\n\r\n"
    )
    async with Server(lambda n: chunked if n == 1 else OK) as server:
        pool = Pool(LOOPBACK)
        first = await pool.post(server.url, request(server.url))
        assert (first.status, first.retry_after) == (503, "7")
        assert (await pool.post(server.url, request(server.url))).status == 200
        await pool.close()
    assert server.connections == 1


async def test_an_answer_that_closes_or_has_no_length_is_not_reused():
    answers = {
        1: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        2: b"HTTP/1.0 202 Accepted\r\n\r\nread until the end",
        3: OK,
    }
    async with Server(answers.get, close_after=lambda n: n < 3) as server:
        pool = Pool(LOOPBACK)
        assert [(await pool.post(server.url, request(server.url))).status for _ in range(3)] == [200, 202, 200]
        await pool.close()
    assert server.connections == 3


async def test_an_interim_answer_is_skipped_for_the_real_one():
    async with Server(lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + OK) as server:
        pool = Pool(LOOPBACK)
        assert (await pool.post(server.url, request(server.url))).status == 200
        await pool.close()


async def test_an_idle_connection_the_server_closed_is_replaced_without_a_failure():
    async with Server(lambda n: OK, close_after=lambda n: True) as server:
        pool = Pool(LOOPBACK)
        assert (await pool.post(server.url, request(server.url))).status == 200
        await asyncio.sleep(0.1)  # the server's close reaches the idle connection
        assert (await pool.post(server.url, request(server.url))).status == 200
        await pool.close()
    assert server.connections == 2 and len(server.requests) == 2  # each request sent once


async def test_a_request_dropped_unanswered_on_a_reused_connection_is_sent_once_more_on_a_new_one():
    # Indistinguishable from the idle-close race: sent again at once (it carries its
    # idempotency key); dropped again on the new connection, it fails.
    async with Server(lambda n: OK if n == 1 else None, close_after=lambda n: n >= 2) as server:
        pool = Pool(LOOPBACK)
        await pool.post(server.url, request(server.url))
        with pytest.raises(ConnectionError):
            await pool.post(server.url, request(server.url))
        await pool.close()
    assert len(server.requests) == 3 and server.connections == 2


async def test_a_head_that_is_not_http_or_too_long_is_a_protocol_error():
    for garbage in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n"):
        async with Server(lambda n, garbage=garbage: garbage) as server:
            pool = Pool(LOOPBACK)
            with pytest.raises(ProtocolError):
                await pool.post(server.url, request(server.url))
            await pool.close()


async def test_the_guard_refuses_a_host_at_each_new_connection_once_its_answer_expired():
    async with Server(lambda n: OK, close_after=lambda n: True) as server:
        policy = AddressPolicy(["loopback"])
        pool = Pool(policy, dns_seconds=0)
        assert (await pool.post(server.url, request(server.url))).status == 200
        policy.allowed = frozenset()  # as if the name now resolved inside
        await asyncio.sleep(0.1)
        with pytest.raises(Forbidden, match="loopback"):
            await pool.post(server.url, request(server.url))
        await pool.close()
    assert len(server.requests) == 1


async def test_the_sender_reads_a_timeout_or_a_bad_answer_as_retryable_and_a_bad_header_as_refused():
    async with Server(lambda n: None) as silent, Server(lambda n: b"nonsense\r\n\r\n") as babbling:
        sender = HttpSender(LOOPBACK, timeout=0.3)
        base = f"http://127.0.0.1:{silent.url.port}"
        with pytest.raises(Retryable, match="TimeoutError"):
            await sender.post(f"{base}/hook", b"{}", "d-1")
        with pytest.raises(Retryable, match="ProtocolError"):
            await sender.post(f"http://127.0.0.1:{babbling.url.port}/hook", b"{}", "d-2")
        await sender.close()
        injected = HttpSender(LOOPBACK, timeout=1, headers={"X-Evil": "a\r\nX-Other: b"})
        with pytest.raises(Refused, match="line break"):
            await injected.post(f"{base}/hook", b"{}", "d-3")
        await injected.close()
    assert len(silent.requests) == 1  # the injected one never went out
