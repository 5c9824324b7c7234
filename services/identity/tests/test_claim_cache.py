"""The claim cache's index by home profile stays what the cache holds: through evictions, pops,
a key cached again under another home, and clear."""

from __future__ import annotations

from identity_service.claim_cache import ClaimCache
from identity_service.store import Claim


def claim(profile_id: str) -> Claim:
    return Claim(profile_id, "e", 1, "web")


def test_the_index_follows_evictions_pops_and_rehoming():
    cache = ClaimCache(3)
    for key, home in [(("a", "1"), "p"), (("a", "2"), "p"), (("a", "3"), "q")]:
        cache.put(key, claim(home))
    assert sorted(cache.keys_of(["p"])) == [("a", "1"), ("a", "2")]
    cache.get(("a", "1"))  # now the most recently used: ("a", "2") goes first
    cache.put(("a", "4"), claim("q"))
    assert cache.keys_of(["p"]) == [("a", "1")] and sorted(cache.keys_of(["q"])) == [("a", "3"), ("a", "4")]
    cache.put(("a", "3"), claim("p"))  # the same key under another home
    assert sorted(cache.keys_of(["p"])) == [("a", "1"), ("a", "3")] and cache.keys_of(["q"]) == [("a", "4")]
    assert cache.pop(("a", "4")) is not None and cache.keys_of(["q"]) == [] and cache._keys.keys() == {"p"}
    cache.clear()
    assert len(cache) == 0 and cache.keys_of(["p"]) == []
