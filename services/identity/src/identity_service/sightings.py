"""What each event leaves besides the graph: the last sighting of its identifiers and its link.

Sightings (when each identifier was last seen, for GetIdentities) are written behind: every
event refreshes them, so written one event at a time they would cost a request per event
even for a person the graph already knows well. They are kept in memory, the latest per
identifier, and written every `flush_seconds` and at stop; a person seen a hundred times a
second costs one write a second. A crash loses at most one interval of refreshes (the
identifier's next event repairs it); `last_seen` is a "seen at least until" figure.

Links (the identifiers an event carried together, replayed by the rule dry-run) are recorded
once per set of identifiers per process: the graph of a replay only grows, so a set it has
applied once changes nothing when it comes again. The link of an event that changed the
graph is written before the event is acknowledged, with those of its fetched batch
(`write_owed`); the link of one that changed nothing is only further evidence for what the
graph holds already, and is written behind with the sightings.

Sightings of a person being erased (`erased`, heard by every replica) are never written: those
pending are dropped at each flush, and `forget` removes what a flush in flight, or one made
before the notice came, wrote after the erasure had removed their rows.
"""

from __future__ import annotations

import asyncio
import logging

from identity_service.erasures import ErasedProfiles
from identity_service.store import IdentityStore, Key, Link
from mosaic.platform.lru import Lru

log = logging.getLogger("identity.sightings")


class Sightings:
    def __init__(
        self,
        store: IdentityStore,
        flush_seconds: float = 1.0,
        known_links: int = 200_000,
        erased: ErasedProfiles | None = None,
    ) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.erased = erased if erased is not None else ErasedProfiles()
        self._flushing = asyncio.Lock()
        self._writing = asyncio.Lock()
        self._seen: dict[Key, tuple[str, int]] = {}  # identifier → (home profile, event time)
        self._links: list[Link] = []  # written behind
        self._owed: list[Link] = []  # written before their events are acknowledged
        self._known: Lru[frozenset[Key], bool] = Lru(known_links)  # sets of identifiers linked already

    def seen(self, homes: dict[Key, str], at: int) -> None:
        """Identifiers (with their home profiles) seen in an event of time `at`."""
        for key, home in homes.items():
            last = self._seen.get(key)
            if last is None or at > last[1]:
                self._seen[key] = (home, at)

    def link(self, link: Link, changed_graph: bool) -> None:
        """Record `link` unless this process recorded the same set of identifiers already: one
        that changed the graph at the next `write_owed`, the others behind."""
        identifiers = frozenset(link.identifiers)
        if self._known.get(identifiers):
            return
        (self._owed if changed_graph else self._links).append(link)
        self._known.put(identifiers, True)

    async def write_owed(self) -> None:
        """Write the links owed by events that changed the graph (before they are acknowledged).
        One at a time: a caller finding nothing owed knows every link before its own is written."""
        async with self._writing:
            owed, self._owed = self._owed, []
            if not owed:
                return
            try:
                await self.store.record_links(owed)
            except BaseException:
                self._owed = owed + self._owed  # owed still: the next call writes them
                raise

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush()

    async def forget(self, profile_ids: set[str]) -> None:
        """The people of these profiles are being erased: once a flush in flight is done, their
        sightings are removed, as stored and as pending (the erased filter keeps them out after)."""
        async with self._flushing:
            self._seen = {key: seen for key, seen in self._seen.items() if seen[0] not in profile_ids}
            await self.store.forget_sightings(sorted(profile_ids))

    async def _flush(self) -> None:
        seen = {key: (home, at) for key, (home, at) in self._seen.items() if home not in self.erased}
        self._seen = {}
        links, self._links = self._links, []
        try:
            if seen:
                await self.store.touch_many(seen)
            for start in range(0, len(links), 1000):
                await self.store.record_links(links[start : start + 1000])
        except BaseException:
            for key, (home, at) in seen.items():  # kept for the next round
                self.seen({key: home}, at)
            self._links.extend(links)
            raise

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush on an interval until `stopping`, then once more."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self.flush_seconds)
            except asyncio.TimeoutError:
                pass
            await self._flush_logged()
        await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:  # noqa: BLE001 - logged; the sightings stay for the next round
            log.exception("writing sightings failed")
