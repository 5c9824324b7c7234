"""Sending one delivery as a JSON POST, traced, with an idempotency key for the receiver."""

from __future__ import annotations

import aiohttp
from opentelemetry import propagate, trace

tracer = trace.get_tracer("mosaic.delivery.webhook")


class Refused(Exception):
    """The destination answered with a 4xx: sending again will not help."""


class Failed(Exception):
    """The destination is unreachable or answered with a 5xx: sending again may help."""


class WebhookSender:
    def __init__(self, timeout: float) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, url: str, body: dict, idempotency_key: str) -> int:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        with tracer.start_as_current_span(
            "POST", kind=trace.SpanKind.CLIENT, attributes={"http.request.method": "POST", "url.full": url}
        ) as span:
            headers = {"Idempotency-Key": idempotency_key, "User-Agent": "mosaic-delivery"}
            propagate.inject(headers)
            try:
                async with self._session.post(url, json=body, headers=headers) as response:
                    span.set_attribute("http.response.status_code", response.status)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                raise Failed(f"{type(error).__name__}: {error}") from error
        if 400 <= status < 500 and status not in (408, 429):
            raise Refused(f"HTTP {status}")
        if status >= 300:
            raise Failed(f"HTTP {status}")
        return status

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
