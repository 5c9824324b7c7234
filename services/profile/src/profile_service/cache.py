"""A bounded LRU of latest profiles, written through by the single writer of each profile.

Only profiles on partitions this replica owns are cached: it is their only writer, so its
copy can never be stale; other profiles are read from the store.
"""

from __future__ import annotations

from mosaic.platform.lru import Lru
from mosaic.platform.topics import partition_of
from profile_service.store import Latest


class ProfileCache:
    def __init__(self, size: int, partitions: int, owned: tuple[int, ...]) -> None:
        self.size = size
        self.partitions = partitions
        self.owned = frozenset(owned)
        self._entries: Lru[str, Latest] = Lru(size)
        self.hits = 0
        self.misses = 0

    def cacheable(self, profile_id: str) -> bool:
        return self.size > 0 and partition_of(profile_id, self.partitions) in self.owned

    def get(self, profile_id: str) -> Latest | None:
        latest = self._entries.get(profile_id)
        if latest is None:
            self.misses += 1
            return None
        self.hits += 1
        return latest

    def discard(self, profile_id: str) -> None:
        self._entries.pop(profile_id)

    def put(self, latest: Latest) -> None:
        profile_id = latest.profile.profile_id
        if not self.cacheable(profile_id):
            return
        self._entries.put(profile_id, latest)
