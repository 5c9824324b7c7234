"""Sending over HTTP: a webhook's JSON, an SMS or push provider's request, an audience batch.

Every request carries the idempotency key (`Idempotency-Key`, and `webhook-id` of the Standard
Webhooks scheme), the destination's own headers, the W3C trace context, and the Standard
Webhooks signature (`webhook-timestamp`, `webhook-signature`: HMAC-SHA256 of id, time and
body with the destination's secret, by the `standardwebhooks` package). Redirects are not
followed (a redirect could point inside), and every new connection resolves through the SSRF
guard (http1.Pool). How the answer is read:

- 2xx: sent.
- 408, 429 and 5xx, timeouts and connection errors: `Retryable`, with the `Retry-After`
  seconds (or HTTP date) when the destination sent one.
- any other 4xx or 3xx: `Refused`, never retried.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from opentelemetry import propagate, trace
from standardwebhooks.webhooks import Webhook

from delivery_service.http1 import Closed, Pool, ProtocolError, Url
from delivery_service.ssrf import AddressPolicy, Forbidden

tracer = trace.get_tracer("mosaic.delivery.webhook")


class Refused(Exception):
    """The destination refused the delivery: sending it again will not help."""


class Retryable(Exception):
    """The destination is unreachable, slow or overloaded: sending again may help."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's seconds: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def header_lines(headers: dict[str, str]) -> bytes:
    """Headers as request lines; ValueError for a value that would break the request."""
    lines = []
    for name, value in headers.items():
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} has a line break or NUL in its value")
        lines.append(f"{name}: {value}\r\n".encode())
    return b"".join(lines)


class HttpSender:
    """One destination's HTTP client: its own kept-alive connections (http1.Pool), its own
    headers and Standard Webhooks signing key, prepared once."""

    def __init__(
        self, policy: AddressPolicy, timeout: float, secret: str = "", headers: dict[str, str] | None = None
    ) -> None:
        self._signer = Webhook(secret) if secret else None
        self._timeout = timeout
        self._pool = Pool(policy)
        self._urls: dict[str, Url] = {}
        try:
            self._fixed = header_lines(
                {**(headers or {}), "Content-Type": "application/json", "User-Agent": "mosaic-delivery"}
            )
            self._bad = ""
        except ValueError as error:  # refused at creation since; one stored before is refused here
            self._fixed, self._bad = b"", str(error)

    async def post(self, url: str, body: bytes, delivery_id: str) -> int:
        """POST `body` (JSON); the HTTP status when it was accepted, else Refused or Retryable."""
        if self._bad:
            raise Refused(self._bad)
        target = self._urls.get(url)
        if target is None:
            try:
                target = self._urls[url] = Url.parse(url)
            except ValueError as error:
                raise Refused(f"bad URL: {error}") from error
        with tracer.start_as_current_span(
            "POST", kind=trace.SpanKind.CLIENT, attributes={"http.request.method": "POST", "url.full": url}
        ) as span:
            request = self._request(target, body, delivery_id)
            try:
                async with asyncio.timeout(self._timeout):
                    answer = await self._pool.post(target, request)
            except Forbidden as error:
                raise Refused(f"address refused: {error}") from error
            except TimeoutError as error:
                raise Retryable("TimeoutError") from error
            except (Closed, ProtocolError, OSError) as error:
                raise Retryable(f"{type(error).__name__}: {error}".rstrip(": ")) from error
            status = answer.status
            span.set_attribute("http.response.status_code", status)
        if 200 <= status < 300:
            return status
        if status in (408, 429) or status >= 500:
            raise Retryable(f"HTTP {status}", retry_after_seconds(answer.retry_after))
        raise Refused(f"HTTP {status}")

    def _request(self, url: Url, body: bytes, delivery_id: str) -> bytes:
        sent = {"Idempotency-Key": delivery_id}
        if self._signer is not None:
            now = datetime.now(tz=timezone.utc)
            sent["webhook-id"] = delivery_id
            sent["webhook-timestamp"] = str(int(now.timestamp()))
            sent["webhook-signature"] = self._signer.sign(delivery_id, now, body.decode())
        propagate.inject(sent)
        return b"".join(
            (
                b"POST ",
                url.target,
                b" HTTP/1.1\r\nHost: ",
                url.host_header,
                b"\r\n",
                self._fixed,
                header_lines(sent),
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )

    async def close(self) -> None:
        await self._pool.close()
