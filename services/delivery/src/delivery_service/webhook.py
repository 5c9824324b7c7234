"""Sending over HTTP: a webhook's JSON, an SMS or push provider's request, an audience batch.

Every request carries the idempotency key (`Idempotency-Key`, and `webhook-id` of the Standard
Webhooks scheme), the destination's own headers, the W3C trace context, and the Standard
Webhooks signature (`webhook-timestamp`, `webhook-signature`: HMAC-SHA256 of id, time and
body with the destination's secret, by the `standardwebhooks` package). Redirects are not
followed (a redirect could point inside), and every connection resolves through the SSRF
guard. How the answer is read:

- 2xx: sent.
- 408, 429 and 5xx, timeouts and connection errors: `Retryable`, with the `Retry-After`
  seconds (or HTTP date) when the destination sent one.
- any other 4xx or 3xx: `Refused`, never retried.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import aiohttp
from opentelemetry import propagate, trace
from standardwebhooks.webhooks import Webhook

from delivery_service.ssrf import AddressPolicy, Forbidden, GuardedResolver


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


class HttpSender:
    """One destination's HTTP client: its own connection pool, sized to its concurrency."""

    def __init__(
        self, policy: AddressPolicy, concurrency: int, timeout: float, tracer: trace.Tracer, secret: str = ""
    ) -> None:
        self._tracer = tracer  # the worker's: taken from the provider, not a module's proxy
        self._signer = Webhook(secret) if secret else None
        connector = aiohttp.TCPConnector(limit=concurrency, resolver=GuardedResolver(policy), ttl_dns_cache=10)
        # No cookie jar: a destination's cookies are not sent back to it (nor filtered per request).
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), cookie_jar=aiohttp.DummyCookieJar()
        )

    async def post(self, url: str, body: bytes, delivery_id: str, headers: dict[str, str]) -> int:
        """POST `body` (JSON); the HTTP status when it was accepted, else Refused or Retryable."""
        with self._tracer.start_as_current_span(
            "POST", kind=trace.SpanKind.CLIENT, attributes={"http.request.method": "POST", "url.full": url}
        ) as span:
            sent = {
                **headers,
                "Content-Type": "application/json",
                "Idempotency-Key": delivery_id,
                "User-Agent": "mosaic-delivery",
            }
            if self._signer is not None:
                now = datetime.now(tz=timezone.utc)
                sent["webhook-id"] = delivery_id
                sent["webhook-timestamp"] = str(int(now.timestamp()))
                sent["webhook-signature"] = self._signer.sign(delivery_id, now, body.decode())
            propagate.inject(sent)
            try:
                async with self._session.post(url, data=body, headers=sent, allow_redirects=False) as response:
                    status = response.status
                    span.set_attribute("http.response.status_code", status)
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            except Forbidden as error:
                raise Refused(f"address refused: {error}") from error
            except (aiohttp.ClientError, TimeoutError) as error:
                raise Retryable(f"{type(error).__name__}: {error}".rstrip(": ")) from error
        if 200 <= status < 300:
            return status
        if status in (408, 429) or status >= 500:
            raise Retryable(f"HTTP {status}", retry_after)
        raise Refused(f"HTTP {status}")

    async def close(self) -> None:
        await self._session.close()
