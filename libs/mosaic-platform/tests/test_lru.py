"""The shared bounded LRU."""

from mosaic.platform.lru import Lru


def test_the_least_recently_used_entry_goes_first_and_is_returned():
    lru: Lru[str, int] = Lru(2)
    assert lru.put("a", 1) is None
    assert lru.put("b", 2) is None
    assert lru.get("a") == 1  # now "b" is the least recently used
    assert lru.put("c", 3) == ("b", 2)
    assert ("a" in lru, "b" in lru, "c" in lru, len(lru)) == (True, False, True, 2)
    assert lru.pop("a") == 1 and lru.pop("a") is None and lru.get("a") is None
