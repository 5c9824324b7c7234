"""A read on a real Cassandra node gives every row, past the driver's first page."""

from mosaic.platform.store import Migration
from mosaic.platform.store.cassandra import CassandraStore

PAGE = 5000  # the driver's default fetch size


async def test_a_read_of_more_rows_than_a_page_gives_them_all(cassandra_keyspace):
    store = CassandraStore(cassandra_keyspace, "pages")
    await store.open([Migration(1, ("CREATE TABLE IF NOT EXISTS pages_rows (k text, i int, PRIMARY KEY ((k), i))",))])
    try:
        insert = "INSERT INTO pages_rows (k, i) VALUES (?, ?)"
        rows = PAGE + 1234
        await store.execute_partitioned({"a": [(insert, ("a", i)) for i in range(rows)]}, atomic=False, at_once=8)
        await store.execute(insert, ("b", 1))
        found = await store.execute("SELECT i FROM pages_rows WHERE k IN ?", (["a", "b"],))
        assert sorted(row.i for row in found) == sorted([*range(rows), 1])
        assert await store.execute("SELECT i FROM pages_rows WHERE k = ?", ("none",)) == []
    finally:
        await store.close()
