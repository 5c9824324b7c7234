"""Connecting to NATS (TLS, credentials, reconnecting forever), and the errors that mean it is away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import tenacity

from mosaic.platform import retry
from mosaic.platform.config import TlsSettings
from mosaic.platform.errors import Unavailable

log = logging.getLogger("mosaic.bus")

# NATS not answering: down, reconnecting, or too slow. Retryable.
NATS_DOWN = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    asyncio.TimeoutError,
)
# JetStream itself not answering yet (just restarted, or no stream leader): retryable too.
JETSTREAM_DOWN = (
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.TooManyStalledMsgsError,
)


def settling(patience: float) -> tenacity.AsyncRetrying:
    """Retrying for the first write to a stream or bucket just created. Services start together
    and each creates it: nats-server 2.9 can answer the second create (same configuration, so
    "made") before the first has subscribed the stream, and a write then finds no responders
    (1 start in 40 of six services creating one bucket, and once in CI). Written again, it lands."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type((*NATS_DOWN, *JETSTREAM_DOWN)),
        stop=tenacity.stop_after_delay(patience),
        wait=retry.wait(0.05, 1.0, jitter=True),
        reraise=True,
    )


def nats_security(tls: TlsSettings | None, credentials: str) -> dict[str, Any]:
    """nats.connect's arguments for TLS (verify the server, present our certificate) and a
    .creds file, for every connection a service opens."""
    secure: dict[str, Any] = {}
    if tls is not None and tls.enabled:
        secure = {"tls": tls.context(), "tls_hostname": tls.server_name or None}
    if credentials:
        secure["user_credentials"] = credentials
    return secure


async def connect(
    url: str,
    name: str,
    tls: TlsSettings | None,
    credentials: str,
    deadline: float,
    on_reconnect: Callable[[], None] | None = None,
) -> nats.NATS:
    """Connect, reconnecting forever once connected; Unavailable if not connected within
    `deadline` seconds (a server that never completes the handshake, as a TLS server does for a
    plaintext client, would otherwise hold the start forever). `on_reconnect` is called (it
    must not block) each time the connection is back."""

    async def reconnected() -> None:
        log.warning("reconnected to nats")
        if on_reconnect is not None:
            on_reconnect()

    client: list[nats.NATS] = []

    async def disconnected() -> None:
        # nats-py calls this on a close too: a stop is no warning.
        if client and client[0].is_closed:
            log.info("connection to nats closed")
        else:
            log.warning("disconnected from nats")

    connecting = nats.connect(
        url,
        name=name,
        **nats_security(tls, credentials),
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=_log_error,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
    )
    try:
        client.append(await asyncio.wait_for(connecting, deadline))
        return client[0]
    except asyncio.TimeoutError:
        raise Unavailable("nats", f"{url} did not complete a connection within {deadline:.0f} s") from None


async def _log_error(error: Exception) -> None:
    log.warning("nats: %r", error)
