"""The HTTP server against clients that misbehave: headers too long, bodies never finished,
disconnects. Raw sockets, since a well-behaved client library would not send these."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest

from mosaic.testing.plugin import eventually

SECRET = "S3CRET-write-key"


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 20)  # the server closes after these answers
    writer.close()
    return answer


def errors(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_header_over_8_kb_is_a_400_that_neither_echoes_nor_logs_it_as_an_error(ingestion, caplog):
    caplog.set_level(logging.INFO)
    auth = "Basic " + base64.b64encode(f"{SECRET}:".encode()).decode() * 500
    answer = await exchange(
        ingestion.parts.http_port,
        (f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 2\r\n\r\n{{}}").encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") or head.startswith(b"HTTP/1.0 400")
    assert json.loads(body) == {"success": False, "message": "a request line or header is over 8190 bytes"}
    encoded = base64.b64encode(f"{SECRET}:".encode()).decode()
    assert encoded[:12] not in answer.decode()
    assert errors(caplog) == []
    assert not any(encoded[:12] in record.getMessage() for record in caplog.records)


async def test_a_body_never_finished_is_a_408_after_the_read_timeout(start_ingestion, caplog):
    caplog.set_level(logging.INFO)
    ingestion = await start_ingestion(MOSAIC_HTTP_READ_TIMEOUT_SECONDS="0.5")
    answer = await exchange(
        ingestion.parts.http_port, (b'POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"userId": ')
    )  # and then nothing: the server answers and closes, or this test would hang
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {"success": False, "message": "the body did not arrive within 0.5 s"}
    assert errors(caplog) == []


async def test_a_client_that_disconnects_mid_body_is_not_an_error(ingestion, caplog):
    caplog.set_level(logging.INFO)
    reader, writer = await asyncio.open_connection("127.0.0.1", ingestion.parts.http_port)
    writer.write(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b" " * 70_000)
    await writer.drain()
    await asyncio.sleep(0.2)  # let the server start reading the body
    writer.transport.abort()
    await eventually(lambda: any("disconnect" in r.getMessage() for r in caplog.records), timeout=10)
    assert errors(caplog) == []


@pytest.mark.parametrize("request_line", [b"GARBAGE\r\n\r\n", b"POST /v1/track HTTP/1.1\r\nBad Header\r\n\r\n"])
async def test_a_request_http_cannot_parse_is_a_400_without_an_error_log(ingestion, caplog, request_line):
    caplog.set_level(logging.INFO)
    answer = await exchange(ingestion.parts.http_port, request_line)
    assert b" 400 " in answer.split(b"\r\n")[0]
    assert errors(caplog) == []
