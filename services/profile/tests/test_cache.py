"""The latest-profile cache (pure): what is read back is what was put, as a copy of its own."""

from mosaic.platform.topics import partition_of
from mosaic.profile.v1 import profile_pb2
from profile_service.cache import ProfileCache
from profile_service.store import Latest


def _latest(profile_id: str, email: str) -> Latest:
    profile = profile_pb2.Profile(profile_id=profile_id, version=3, event_count=7)
    profile.traits["email"].value.string_value = email
    return Latest(profile, '{"orders": {"count": 2}}', "")


def test_a_cached_profile_reads_back_equal_and_a_reader_changing_it_changes_no_other_reader():
    cache = ProfileCache(10, 8, range(8))
    cache.put(_latest("p1", "a@example.com"))
    first = cache.get("p1")
    assert first == _latest("p1", "a@example.com")
    first.profile.traits["email"].value.string_value = "changed@example.com"
    first.profile.version = 99
    assert cache.get("p1") == _latest("p1", "a@example.com")
    assert (cache.hits, cache.misses) == (2, 0)


def test_only_owned_partitions_are_cached_and_a_handed_over_one_is_forgotten():
    owned = partition_of("p1", 8)
    cache = ProfileCache(10, 8, [owned])
    cache.put(_latest("p1", "a@example.com"))
    other = next(f"q{i}" for i in range(100) if partition_of(f"q{i}", 8) != owned)
    cache.put(_latest(other, "b@example.com"))
    assert cache.get(other) is None and cache.get("p1") is not None


async def test_a_partition_handed_over_is_dropped_from_the_cache():
    owned = partition_of("p1", 8)
    cache = ProfileCache(10, 8, [owned])
    cache.put(_latest("p1", "a@example.com"))
    await cache.disown(frozenset([owned]))
    assert cache.get("p1") is None
