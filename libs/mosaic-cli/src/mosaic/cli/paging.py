"""Walking a paged List RPC: every item, page after page (each page's `next_page_token`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any


async def every(call: Callable[..., Awaitable[Any]], request: Any, items: str, **options: Any) -> AsyncIterator[Any]:
    """The items (the response field `items`) of every page of `call(request)`, in order."""
    while True:
        page = await call(request, **options)
        for item in getattr(page, items):
            yield item
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token
