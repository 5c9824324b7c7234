"""CheckConsent's cache: each replica keeps the people it was asked about, kept current by
`consent.changed`, which every replica hears (a plain subscription, `Bus.listen`).

A notice drops every profile it names. A read that started before a drop does not store its
(possibly older) answer: every drop moves an epoch on, and a load stores only if the epoch did
not move while it ran. What a replica misses while disconnected from NATS ages out after
`max_age` seconds. The writing replica drops at once, so its own callers read their write.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from consent_service.ledger import PersonView
from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform.consent import named
from mosaic.platform.lru import Lru


class ConsentCache:
    def __init__(
        self, load: Callable[[str], Awaitable[PersonView]], size: int = 100_000, max_age: float = 60.0
    ) -> None:
        self._load = load
        self._views: Lru[str, PersonView] = Lru(size)
        self._epoch = 0
        self.max_age = max_age
        self.hits = 0
        self.misses = 0

    async def get(self, profile_id: str) -> PersonView:
        view = self._views.get(profile_id)
        if view is not None and time.monotonic() - view.loaded_at < self.max_age:
            self.hits += 1
            return view
        self.misses += 1
        epoch = self._epoch
        view = await self._load(profile_id)
        if epoch == self._epoch:
            self._views.put(profile_id, view)
        return view

    def drop(self, profile_ids: Iterable[str]) -> None:
        self._epoch += 1
        for profile_id in profile_ids:
            self._views.pop(profile_id)

    def on_changed(self, change: consent_changed_pb2.ConsentChanged) -> None:
        """The handler of `consent.changed` notices."""
        self.drop(named(change))
