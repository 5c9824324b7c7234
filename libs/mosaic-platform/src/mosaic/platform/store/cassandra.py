"""The Cassandra backend: one session per process, prepared statements, migrations, asyncio.

The driver runs its own I/O thread; `execute` bridges its futures into asyncio. Errors that
mean "try again later" (no host, timeouts, not enough replicas) become `Unavailable`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from cassandra import ConsistencyLevel, OperationTimedOut, RequestExecutionException
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, SimpleStatement, named_tuple_factory

from mosaic.platform.config import CassandraSettings
from mosaic.platform.errors import Unavailable
from mosaic.platform.store import Migration

log = logging.getLogger("mosaic.store.cassandra")

# Timeouts and unavailable replicas are retryable; an invalid query is a bug and propagates.
_RETRYABLE = (NoHostAvailable, OperationTimedOut, RequestExecutionException, ConnectionException)

Statement = tuple[str, Sequence[Any]]
K = TypeVar("K", bound=Hashable)  # a partition's key

# A request of several partitions holds at most ten (the node warns above that:
# unlogged_batch_across_partitions_warn_threshold) and 24 KiB of values. The node measures a
# batch with its cells' overhead, ~1.45x the values here (32 KiB of values measured 45-48 KiB),
# and refuses one of several partitions above batch_size_fail_threshold (50 KiB by default);
# it warns above batch_size_warn_threshold (5 KiB by default: deploy/local's node says 40).
PARTITIONS_PER_REQUEST = 10
BYTES_PER_REQUEST = 24 * 1024


def packed(partitions: Mapping[K, Sequence[Statement]], *, split: bool) -> Iterator[list[Statement]]:
    """The statements of `partitions` (key -> its statements, in order) in requests within the
    limits above. With `split`, a partition larger than a request goes over several; without,
    each partition's statements stay in one request, alone when they are larger than a request
    (the node checks the size only of a batch of several partitions)."""
    request: list[Statement] = []
    keys: set[K] = set()
    size = 0
    for key, statements in partitions.items():
        lengths = [sum(len(v) for v in params if isinstance(v, (bytes, str))) for _, params in statements]
        if not split and request and (size + sum(lengths) > BYTES_PER_REQUEST or len(keys) == PARTITIONS_PER_REQUEST):
            yield request
            request, keys, size = [], set(), 0
        for statement, length in zip(statements, lengths, strict=True):
            if (
                split
                and request
                and (size + length > BYTES_PER_REQUEST or (key not in keys and len(keys) == PARTITIONS_PER_REQUEST))
            ):
                yield request
                request, keys, size = [], set(), 0
            request.append(statement)
            keys.add(key)
            size += length
    if request:
        yield request


@functools.lru_cache(maxsize=1024)  # one per statement's columns: a few dozen per service
def _row_type(colnames: tuple[str, ...]) -> Any:
    """The driver's own Row namedtuple for these columns (the same names and cleaning), made once."""
    [row] = named_tuple_factory(colnames, [colnames])
    return type(row)


def _rows(colnames: list[str], rows: list[Sequence[Any]]) -> list[Any]:
    """Rows as the driver's default factory gives them, without its cost: that makes a new
    namedtuple class for every result, 12 % of identity's CPU on Cassandra (py-spy)."""
    make = _row_type(tuple(colnames))._make
    return [make(row) for row in rows]


class CassandraStore:
    """A session on the deployment's keyspace, with the service's schema migrated."""

    def __init__(self, settings: CassandraSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._results: _Results | None = None

    async def open(self, migrations: Sequence[Migration]) -> None:
        """Connect and apply the migrations not yet applied (blocking work runs in a thread)."""
        await asyncio.to_thread(self._open, migrations)

    def _open(self, migrations: Sequence[Migration]) -> None:
        s = self.settings
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=s.local_dc)),
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            request_timeout=10,
            row_factory=_rows,
        )
        auth = PlainTextAuthProvider(s.username, s.password) if s.username else None
        tls: dict[str, Any] = {}
        if s.tls.enabled:  # client encryption: verify the node (and present our certificate)
            context = s.tls.context()
            assert context is not None  # enabled: it has a CA
            context.check_hostname = bool(s.tls.server_name)
            tls = {
                "ssl_context": context,
                "ssl_options": {"server_hostname": s.tls.server_name} if s.tls.server_name else None,
            }
        self._cluster = Cluster(
            list(s.hosts),
            port=s.port,
            protocol_version=5,
            auth_provider=auth,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            **tls,
        )
        try:
            session = self._cluster.connect()
        except NoHostAvailable as error:
            raise Unavailable("cassandra", f"no host of {s.hosts} on port {s.port} answered") from error
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {s.keyspace} WITH replication = "
            f"{{'class': 'NetworkTopologyStrategy', '{s.local_dc}': {s.replication_factor}}}"
        )
        # No `USE keyspace` on the session (Cassandra 5 warns that it makes prepared statements
        # ambiguous): every statement carries the keyspace, as protocol v5 allows.
        self._session = session

        def run(cql: str, params: Sequence[Any] = ()) -> Any:
            return session.execute(SimpleStatement(cql, keyspace=s.keyspace), params)

        run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " service text, version int, applied_at timestamp, PRIMARY KEY (service, version))"
        )
        applied = {
            row.version for row in run("SELECT version FROM schema_migrations WHERE service = %s", (self.service,))
        }
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in applied:
                continue
            for statement in migration.statements:
                run(statement)  # DDL is written IF NOT EXISTS: replicas may race
            run(
                "INSERT INTO schema_migrations (service, version, applied_at) VALUES (%s, %s, toTimestamp(now()))",
                (self.service, migration.version),
            )
            log.info("applied migration", extra={"fields": {"service": self.service, "version": migration.version}})

    def prepare(self, cql: str) -> PreparedStatement:
        """The prepared statement for `cql`, prepared once per process."""
        statement = self._prepared.get(cql)
        if statement is None:
            assert self._session is not None, "store not open"
            statement = self._prepared[cql] = self._session.prepare(cql, keyspace=self.settings.keyspace)
        return statement

    async def execute(self, cql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one prepared statement; returns its rows, every page of them (the driver's pages
        are 5,000 rows: a read of many partitions at once may well pass that)."""
        return await self._run(self.prepare(cql).bind(params))

    async def execute_atomic(self, statements: Sequence[Statement], single_partition: bool = False) -> None:
        """Run writes as one batch: all of them happen, or none. Writes to one partition need
        no batch log (`single_partition`); writes to several go through it (logged)."""
        await self._batch(statements, BatchType.UNLOGGED if single_partition else BatchType.LOGGED)

    async def execute_together(self, statements: Sequence[Statement]) -> None:
        """Run independent writes in one request (an unlogged batch): no atomicity, only one
        round trip instead of one each, which is what a Python client pays for most. Keep it to
        a few partitions (the node warns above ten)."""
        await self._batch(statements, BatchType.UNLOGGED)

    async def execute_partitioned(
        self, partitions: Mapping[K, Sequence[Statement]], *, atomic: bool, at_once: int = 0
    ) -> None:
        """Writes grouped by partition (key -> its statements, in order), in as few requests as
        `packed` allows, side by side (`at_once` at a time, if given: binding a request holds
        the event loop). With `atomic`, each partition's writes are applied together and in
        isolation (a batch's statements of one partition are one mutation), the partitions
        independently of each other (no batch log); else a partition's writes may be split
        over requests, so each must be harmless alone."""
        requests = list(packed(partitions, split=not atomic))
        step = at_once or len(requests) or 1
        for first in range(0, len(requests), step):
            await asyncio.gather(
                *(
                    self.execute(*request[0]) if len(request) == 1 else self._batch(request, BatchType.UNLOGGED)
                    for request in requests[first : first + step]
                )
            )

    async def _batch(self, statements: Sequence[Statement], batch_type: BatchType) -> None:
        batch = BatchStatement(batch_type=batch_type)
        for cql, params in statements:
            batch.add(self.prepare(cql), params)
        await self._run(batch)

    async def _run(self, statement: Any) -> list[Any]:
        assert self._session is not None, "store not open"
        loop = asyncio.get_running_loop()
        if self._results is None or self._results.loop is not loop:
            self._results = _Results(loop)
        results = self._results
        result: asyncio.Future[list[Any]] = loop.create_future()
        response = self._session.execute_async(statement)
        collected: list[Any] = []

        def done(rows: Any) -> None:  # once a page, on the driver's thread
            collected.extend(rows or ())
            if response.has_more_pages:
                response.start_fetching_next_page()
            else:
                results.put(result, collected, None)

        def failed(error: BaseException) -> None:
            results.put(result, None, error)

        response.add_callbacks(done, failed)
        try:
            return await result
        except _RETRYABLE as error:
            raise Unavailable("cassandra", f"{type(error).__name__}: {error}") from error

    async def execute_lwt(self, cql: str, params: Sequence[Any] = ()) -> tuple[bool, Any]:
        """Run a lightweight transaction; returns whether it applied and the row it saw."""
        rows = await self.execute(cql, params)
        row = rows[0]
        return bool(row[0]), row

    async def close(self) -> None:
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.shutdown)
            self._cluster = None
            self._session = None


class _Results:
    """Results handed from the driver's I/O thread to the event loop, with one wake-up of the
    loop for all that arrive before it runs: a wake-up is a write to the loop's self-pipe, and
    one per result (call_soon_threadsafe each) was 14 % of identity's CPU (py-spy)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ready: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = collections.deque()
        self._lock = threading.Lock()
        self._woken = False

    def put(self, future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
        """On the driver's thread."""
        self._ready.append((future, value, error))
        with self._lock:
            if self._woken:
                return
            self._woken = True
        self.loop.call_soon_threadsafe(self._settle_all)

    def _settle_all(self) -> None:
        # The flag first: a result put from now on wakes the loop again, if this misses it.
        with self._lock:
            self._woken = False
        while self._ready:
            _settle(*self._ready.popleft())


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
