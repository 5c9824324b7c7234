"""The columnar view of the latest profiles, and the vectorised evaluator over it.

One row per profile of the partitions this replica owns, in NumPy columns that are updated in
place as profile.updated arrives (why NumPy rather than Polars or DuckDB: see the README):

- a trait path (`traits.address.city`) is a set of columns allocated by the kinds of value seen:
  present (bool), number (float64, NaN elsewhere), string (int32 codes into the path's
  dictionary, -1 elsewhere), boolean (int8, -1 elsewhere), and time (float64 epoch seconds of
  strings that are ISO-8601 times). Nested objects are flattened into their paths; lists are
  kept aside (they only exist or not).
- the daily counts of an event name are sparse (day_entries.py): an entry (row, day, count) for
  each day a profile had the event, of the days kept: the COUNTER_DAYS days the evaluators read
  plus a few days ahead for events stamped in the future. A window sums the entries it holds.
- an event series (series.py) is sparse the same way: an entry (row, day, count, sum, min, max).
- identity types are int16 counts.
- consent is a float64 column per purpose the rows decided, until when it is granted (NaN:
  no decision, the default of the row's jurisdiction, an int8 column, decides).

`evaluate` is the vectorised form of evaluate.evaluate and must agree with it row by row.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from numpy.typing import DTypeLike

from mosaic.consent.v1 import consent_pb2
from mosaic.platform.consent import Policy
from mosaic.platform.lru import Lru
from mosaic.platform.topics import partition_of
from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service import series
from segmentation_service.day_entries import DayEntries
from segmentation_service.evaluate import COUNTER_DAYS, DEFAULT_POLICY, literal_value, pattern, window_days
from segmentation_service.state import DAY, Partial, ProfileState, time_of

if TYPE_CHECKING:
    from segmentation_service.rfm import RfmTraits

# Plain attributes: an enum wrapper's attribute lookup is slow on the per-profile path.
Op = SimpleNamespace(**dict(pb.Operator.items()))
DAYS_KEPT = 96
COUNTS: dict[str, DTypeLike] = {"count": np.uint16}
PARTIALS: dict[str, DTypeLike] = {"count": np.int32, "sum": np.float64, "min": np.float64, "max": np.float64}
COUNT_MAX = np.iinfo(np.uint16).max
ERASED_KEPT = 100_000  # erased profiles remembered, so a late update does not bring one back
TABLES_KEPT = 16  # string tests kept per trait path (a bool per distinct string each)
ORDERINGS = {
    Op.OPERATOR_LESS_THAN: operator.lt,
    Op.OPERATOR_LESS_OR_EQUAL: operator.le,
    Op.OPERATOR_GREATER_THAN: operator.gt,
    Op.OPERATOR_GREATER_OR_EQUAL: operator.ge,
}


def erased_key(profile_id: str) -> str:
    """What an erased profile is remembered by, in memory and in the store: a digest, not its id
    (a profile id is random, so the digest tells only whoever holds the id that it was erased)."""
    return hashlib.blake2b(profile_id.encode(), digest_size=16).hexdigest()


@overload
def _grown(array: np.ndarray, capacity: int, fill) -> np.ndarray: ...
@overload
def _grown(array: None, capacity: int, fill) -> None: ...
def _grown(array: np.ndarray | None, capacity: int, fill) -> np.ndarray | None:
    if array is None or len(array) >= capacity:
        return array
    bigger = np.full((capacity, *array.shape[1:]), fill, array.dtype)
    bigger[: len(array)] = array
    return bigger


def _days_kept(today: int) -> tuple[int, int]:
    """The days a row's counters keep, (first, last]: those the evaluators read, and a few ahead."""
    return today - COUNTER_DAYS, today + DAYS_KEPT - COUNTER_DAYS


class TraitColumns:
    """The columns of one trait path."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.present = np.zeros(capacity, bool)
        self.number: np.ndarray | None = None
        self.code: np.ndarray | None = None
        self.flag: np.ndarray | None = None
        self.time: np.ndarray | None = None
        self.strings: list[str] = []
        self.moments: list[float | None] = []  # each string's time_of, parsed once
        self.codes: dict[str, int] = {}
        self.lists: dict[int, list] = {}
        self._tables: Lru[tuple[int, str], np.ndarray] = Lru(TABLES_KEPT)

    def grow(self, capacity: int) -> None:
        self.capacity = capacity
        self.present = _grown(self.present, capacity, False)
        self.number = _grown(self.number, capacity, np.nan)
        self.code = _grown(self.code, capacity, -1)
        self.flag = _grown(self.flag, capacity, -1)
        self.time = _grown(self.time, capacity, np.nan)

    def clear(self, row: int) -> None:
        if not self.present[row]:
            return
        self.present[row] = False
        for array, empty in ((self.number, np.nan), (self.code, -1), (self.flag, -1), (self.time, np.nan)):
            if array is not None:
                array[row] = empty
        self.lists.pop(row, None)

    def set(self, row: int, value: Any) -> None:
        self.present[row] = True
        if isinstance(value, bool):
            if self.flag is None:
                self.flag = np.full(self.capacity, -1, np.int8)
            self.flag[row] = value
        elif isinstance(value, float):
            if self.number is None:
                self.number = np.full(self.capacity, np.nan)
            self.number[row] = value
        elif isinstance(value, str):
            if self.code is None:
                self.code = np.full(self.capacity, -1, np.int32)
            code = self.codes.get(value)
            if code is None:
                code = self.codes[value] = len(self.strings)
                self.strings.append(value)
                self.moments.append(time_of(value))
            self.code[row] = code
            moment = self.moments[code]
            if moment is not None:
                if self.time is None:
                    self.time = np.full(self.capacity, np.nan)
                self.time[row] = moment
        elif isinstance(value, list):
            self.lists[row] = value

    def get(self, row: int) -> Any:
        """The scalar at the row; {} for an object (its keys are other paths' columns)."""
        if self.flag is not None and self.flag[row] >= 0:
            return bool(self.flag[row])
        if self.number is not None and not math.isnan(self.number[row]):
            return float(self.number[row])
        if self.code is not None and self.code[row] >= 0:
            return self.strings[self.code[row]]
        return self.lists.get(row, {})

    def table(self, key: tuple[int, str], test: Callable[[str], bool]) -> np.ndarray:
        """Whether each of the path's strings passes `test` (one per code), kept per operator and
        literal: the dictionary only grows, so a table kept is extended by the strings that came
        since, not tested whole again (800,000 e-mails: ~60 ms whole)."""
        done = self._tables.get(key)
        start = 0 if done is None else len(done)
        if done is None or start < len(self.strings):
            more = np.fromiter(map(test, islice(self.strings, start, None)), bool, len(self.strings) - start)
            done = more if done is None else np.concatenate((done, more))
            self._tables.put(key, done)
        return done

    def nbytes(self) -> int:
        arrays = (self.present, self.number, self.code, self.flag, self.time)
        # Each string: its characters and str header (49), and its slot in moments (8).
        strings = sum(len(s) + 57 for s in self.strings)
        return sum(a.nbytes for a in arrays if a is not None) + strings + sum(t.nbytes for t in self._tables.values())


class ColumnarView:
    """The latest state of the profiles one replica owns, one row each."""

    def __init__(self, partitions: int = 1, capacity: int = 1024, policy: Policy = DEFAULT_POLICY) -> None:
        self.partitions = partitions
        self.capacity = capacity
        self.policy = policy  # the deployment's consent purposes and their defaults
        # Partitions taken but not loaded yet (rebuilding from the profile service): while any
        # are, the view is partial, and an RFM summary of it would skew the population's edges.
        self.loading: set[int] = set()
        self.rows: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.free: list[int] = []
        self.version = np.zeros(capacity, np.int64)
        self.alive = np.zeros(capacity, bool)
        self.partition = np.zeros(capacity, np.int16)  # the bus partition of the row's profile
        self.timer = np.zeros(capacity, np.int64)  # the timer bucket stored for the row (0: none known)
        self.traits: dict[tuple[int, tuple[str, ...]], TraitColumns] = {}
        self._ordered: list[tuple[int, tuple[str, ...], TraitColumns]] = []
        self.counters: dict[str, DayEntries] = {}  # event name -> its daily counts
        self.series: dict[str, DayEntries] = {}  # series name -> its daily partials
        self.identities: dict[str, np.ndarray] = {}
        self.consent: dict[str, np.ndarray] = {}
        self.jurisdiction = np.zeros(capacity, np.int8)
        self.erased: Lru[str, bool] = Lru(ERASED_KEPT)

    def __len__(self) -> int:
        return int(self.alive[: len(self.ids)].sum())

    def __contains__(self, profile_id: str) -> bool:
        return profile_id in self.rows

    def _grow(self) -> None:
        self.capacity *= 2
        self.version = _grown(self.version, self.capacity, 0)
        self.alive = _grown(self.alive, self.capacity, False)
        self.partition = _grown(self.partition, self.capacity, 0)
        self.timer = _grown(self.timer, self.capacity, 0)
        for columns in self.traits.values():
            columns.grow(self.capacity)
        for kind, counts in self.identities.items():
            self.identities[kind] = _grown(counts, self.capacity, 0)
        for purpose, until in self.consent.items():
            self.consent[purpose] = _grown(until, self.capacity, np.nan)
        self.jurisdiction = _grown(self.jurisdiction, self.capacity, 0)

    def _row(self, profile_id: str) -> int:
        row = self.rows.get(profile_id)
        if row is not None:
            return row
        if self.free:
            row = self.free.pop()
            self.ids[row] = profile_id
        else:
            row = len(self.ids)
            if row >= self.capacity:
                self._grow()
            self.ids.append(profile_id)
        self.rows[profile_id] = row
        self.partition[row] = partition_of(profile_id, self.partitions)
        return row

    def put(self, state: ProfileState, now: float, alive: bool = True) -> None:
        """Store the state as the profile's row (replacing what it held); an erased profile stays out."""
        if self.is_erased(state.profile_id):
            return
        fresh = state.profile_id not in self.rows
        row = self._row(state.profile_id)
        if not fresh:  # a new row (or a freed one, cleared by remove) holds nothing yet
            for columns in self.traits.values():
                columns.clear(row)
            for counts in self.identities.values():
                counts[row] = 0
            for until in self.consent.values():
                until[row] = np.nan
        self.version[row] = state.version
        self.alive[row] = alive
        for source, values in ((pb.TRAIT_SOURCE_TRAITS, state.traits), (pb.TRAIT_SOURCE_COMPUTED, state.computed)):
            self._put_values(row, source, (), values)
        today = math.floor(now / DAY)
        counters = state.counters
        if any(count > COUNT_MAX for count in counters.values()):
            counters = {key: min(count, COUNT_MAX) for key, count in counters.items()}
        self._put_days(self.counters, COUNTS, row, counters, today, fresh)
        self._put_days(self.series, PARTIALS, row, state.series, today, fresh)
        for kind, count in state.identities.items():
            if kind not in self.identities:
                self.identities[kind] = np.zeros(self.capacity, np.int16)
            self.identities[kind][row] = count
        for purpose, expires in state.consent.items():
            if purpose not in self.consent:
                self.consent[purpose] = np.full(self.capacity, np.nan)
            self.consent[purpose][row] = expires
        self.jurisdiction[row] = state.jurisdiction

    def _put_values(self, row: int, source: int, prefix: tuple[str, ...], values: dict) -> None:
        for key, value in values.items():
            path = (*prefix, key)
            columns = self.traits.get((source, path))
            if columns is None:
                columns = self.traits[(source, path)] = TraitColumns(self.capacity)
            columns.set(row, value)
            if isinstance(value, dict):
                self._put_values(row, source, path, value)

    @staticmethod
    def _put_days(
        entries_of: dict[str, DayEntries],
        values: dict[str, DTypeLike],
        row: int,
        days: dict[tuple[int, str], int] | dict[tuple[int, str], Partial],
        today: int,
        fresh: bool,
    ) -> None:
        """The row's days kept of each event (or series), its counts (or partials); the events
        it had before and has no more cleared (a fresh row has none)."""
        first, last = _days_kept(today)
        by_name: dict[str, dict[int, Any]] = {}
        for (day, name), value in days.items():
            if first < day <= last:
                by_name.setdefault(name, {})[day] = value
        oldest = first + 1
        if not fresh:
            for name, held in entries_of.items():
                if name not in by_name:
                    held.put(row, {}, oldest)
        for name, kept in by_name.items():
            entries = entries_of.get(name)
            if entries is None:
                entries = entries_of[name] = DayEntries(values)
            entries.put(row, kept, oldest)

    def add_counters(
        self,
        rows: np.ndarray,
        days: np.ndarray,
        events: np.ndarray,
        names: Sequence[str],
        counts: np.ndarray,
        now: float,
    ) -> None:
        """Counter i (the count of event `names[events[i]]` on day `days[i]`) of row `rows[i]`, for
        rows put without them, as put would have stored them: a rebuild's page a column at a
        time (ScanProfiles' daily_counters_as_columns), where put goes a cell at a time."""
        first, last = _days_kept(math.floor(now / DAY))
        kept = (first < days) & (days <= last) & (counts > 0)
        for code, event in enumerate(names):
            chosen = kept & (events == code)
            if not chosen.any():
                continue
            entries = self.counters.get(event)
            if entries is None:
                entries = self.counters[event] = DayEntries(COUNTS)
            entries.add(rows[chosen], days[chosen], [np.minimum(counts[chosen], COUNT_MAX)], first + 1)

    def get(self, profile_id: str) -> ProfileState | None:
        """The profile's state as stored (what the plain evaluator reads)."""
        row = self.rows.get(profile_id)
        if row is None:
            return None
        state = ProfileState(profile_id, int(self.version[row]))
        for source, path, columns in self._paths():
            if not columns.present[row]:
                continue
            target = state.traits if source == pb.TRAIT_SOURCE_TRAITS else state.computed
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = columns.get(row)
        for event, entries in self.counters.items():
            state.counters.update(((day, event), count) for day, count in entries.days(row).items())
        for name, entries in self.series.items():
            state.series.update(((day, name), partial) for day, partial in entries.days(row).items())
        state.identities = {kind: int(c[row]) for kind, c in self.identities.items() if c[row]}
        state.consent = {p: float(until[row]) for p, until in self.consent.items() if not math.isnan(until[row])}
        state.jurisdiction = int(self.jurisdiction[row])
        return state

    def _paths(self) -> list[tuple[int, tuple[str, ...], TraitColumns]]:
        """The trait paths, parents before children (sorted again only when a path was added)."""
        if len(self._ordered) != len(self.traits):
            self._ordered = sorted(
                ((source, path, columns) for (source, path), columns in self.traits.items()), key=lambda t: len(t[1])
            )
        return self._ordered

    def is_alive(self, profile_id: str) -> bool:
        row = self.rows.get(profile_id)
        return row is not None and bool(self.alive[row])

    def set_alive(self, profile_id: str, alive: bool) -> None:
        row = self.rows.get(profile_id)
        if row is not None:
            self.alive[row] = alive

    def remove(self, profile_id: str) -> None:
        row = self.rows.get(profile_id)
        if row is None:
            return
        self.put(ProfileState(profile_id), 0.0, alive=False)  # cleared in place, for the next to take
        self.timer[row] = 0
        self.rows.pop(profile_id, None)
        self.ids[row] = None
        self.free.append(row)

    def erase(self, profile_ids: list[str]) -> int:
        """Remove erased profiles' rows, and keep them out from now on; how many rows there were."""
        held = [profile_id for profile_id in profile_ids if profile_id in self.rows]
        for profile_id in held:
            self.remove(profile_id)
        self.remember_erased(erased_key(profile_id) for profile_id in profile_ids)
        return len(held)

    def drop_erased(self, keys: Iterable[str]) -> int:
        """Keep out the profiles of these erased keys, and remove those the view holds: a scan of
        every row's digest (~0.6 µs each), for a replica whose connection was lost, so that it may
        have missed the notice. How many rows went."""
        wanted = set(keys)
        gone = [profile_id for profile_id in self.rows if erased_key(profile_id) in wanted] if wanted else []
        for profile_id in gone:
            self.remove(profile_id)  # first: remove clears the row through put, which skips the erased
        self.remember_erased(wanted)
        return len(gone)

    def remember_erased(self, keys: Iterable[str]) -> None:
        """Keep profiles out by their erased_key (read back from the store on taking a partition)."""
        for key in keys:
            self.erased.put(key, True)

    def is_erased(self, profile_id: str) -> bool:
        return bool(self.erased) and erased_key(profile_id) in self.erased

    def profiles_of(self, partitions: frozenset[int]) -> list[str]:
        """The profiles of these partitions the view holds."""
        n = len(self.ids)
        rows = np.flatnonzero(np.isin(self.partition[:n], sorted(partitions)))
        return [profile_id for profile_id in (self.ids[row] for row in rows) if profile_id is not None]

    def scheduled(self, profile_id: str) -> int:
        row = self.rows.get(profile_id)
        return 0 if row is None else int(self.timer[row])

    def set_scheduled(self, profile_id: str, bucket: int) -> None:
        row = self.rows.get(profile_id)
        if row is not None:
            self.timer[row] = bucket

    def profile_ids(self, mask: np.ndarray, limit: int | None = None) -> list[str]:
        rows = np.flatnonzero(mask)
        return [self.ids[r] for r in (rows[:limit] if limit is not None else rows)]

    def owned_ids(self, alive_only: bool = True) -> list[str]:
        return [pid for pid, row in self.rows.items() if self.alive[row] or not alive_only]

    def nbytes(self) -> int:
        """What the columns hold, in bytes (the id index aside)."""
        arrays = [
            self.version,
            self.alive,
            self.partition,
            self.timer,
            *self.identities.values(),
            *self.consent.values(),
            self.jurisdiction,
        ]
        return (
            sum(a.nbytes for a in arrays)
            + sum(c.nbytes() for c in self.traits.values())
            + sum(c.nbytes() for c in (*self.counters.values(), *self.series.values()))
        )

    def rfm_measures(self, traits: RfmTraits, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(days since the last order, orders, value) of the live customers, as rfm.measures
        reads one profile."""
        n = len(self.ids)
        nothing = np.full(n, np.nan)

        def column(name: str, kind: str) -> np.ndarray:
            columns = self.traits.get((pb.TRAIT_SOURCE_COMPUTED, (name,)))
            values = None if columns is None else getattr(columns, kind)
            return nothing if values is None else values[:n]

        orders, last = column(traits.frequency, "number"), column(traits.recency, "time")
        value = column(traits.monetary, "number")
        customers = self.alive[:n] & (orders >= 1) & (last >= 0)  # NaN (none, or not a number) is neither
        days = np.floor((now - last[customers]) / DAY)
        return days, orders[customers], np.nan_to_num(value[customers], nan=0.0)

    # The vectorised evaluator.

    def evaluate(self, expression: pb.Expression, now: float, partition: int | None = None) -> np.ndarray:
        """A mask over the rows: the live profiles (of one partition) matching the expression."""
        n = len(self.ids)
        mask = self._eval(expression, now, n) & self.alive[:n]
        return mask if partition is None else mask & (self.partition[:n] == partition)

    def _eval(self, node: pb.Expression, now: float, n: int) -> np.ndarray:
        kind = node.WhichOneof("kind")
        if kind == "and":
            return np.logical_and.reduce([self._eval(o, now, n) for o in getattr(node, "and").operands])
        if kind == "or":
            return np.logical_or.reduce([self._eval(o, now, n) for o in getattr(node, "or").operands])
        if kind == "not":
            return ~self._eval(getattr(node, "not"), now, n)
        if kind == "trait":
            return self._trait(node.trait, now, n)
        if kind == "event":
            value, has = self.event_values(node.event, now, n)
            matched = self._compare(node.event.operator, value, node.event.value.number_value)
            return matched if has is None else matched & has
        if kind == "consent":
            return self._consented(node.consent.purpose, now, n)
        fact = node.identity
        if fact.fact == pb.IDENTITY_FACT_HAS_TYPE:
            return self._has(fact.type, n)
        known = self._has("user_id", n)
        return known if fact.fact == pb.IDENTITY_FACT_KNOWN else ~known

    def _consented(self, purpose: str, now: float, n: int) -> np.ndarray:
        configured = self.policy.purposes.get(purpose)
        if configured is None:
            return np.zeros(n, bool)
        jurisdiction = self.jurisdiction[:n]
        law = np.where(jurisdiction == 0, self.policy.jurisdiction, jurisdiction)
        default = np.where(
            law == consent_pb2.JURISDICTION_CCPA, configured.ccpa_default, configured.gdpr_default
        ).astype(bool)
        until = self.consent.get(purpose)
        if until is None:
            return default
        decided = until[:n]
        return np.where(np.isnan(decided), default, decided > now)

    def _has(self, kind: str, n: int) -> np.ndarray:
        counts = self.identities.get(kind)
        return np.zeros(n, bool) if counts is None else counts[:n] > 0

    def event_values(self, event: pb.EventPredicate, now: float, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(value, has) per row: the condition's aggregate, and where it has one (evaluate.py;
        None: every row has one)."""
        if not series.needs_series(event):
            return self.event_counts(event, now, n), None
        columns = self.series.get(series.name_of(event))
        if columns is None:  # nobody has an event of the series: a count or sum of 0, no other value
            return np.zeros(n), None if event.aggregate in series.TOTALS else np.zeros(n, bool)
        return columns.aggregate(event.aggregate, *window_days(event.window, now), n)

    def event_counts(self, event: pb.EventPredicate, now: float, n: int) -> np.ndarray:
        entries = self.counters.get(event.event)
        if entries is None:
            return np.zeros(n)
        return entries.aggregate(pb.AGGREGATE_COUNT, *window_days(event.window, now), n)[0]

    @staticmethod
    def _compare(op: int, left: np.ndarray, right: Any) -> np.ndarray:
        if op == Op.OPERATOR_EQUALS:
            return left == right
        if op == Op.OPERATOR_NOT_EQUALS:
            return left != right
        if op == Op.OPERATOR_LESS_THAN:
            return left < right
        if op == Op.OPERATOR_LESS_OR_EQUAL:
            return left <= right
        if op == Op.OPERATOR_GREATER_THAN:
            return left > right
        return left >= right

    def _trait(self, trait: pb.TraitPredicate, now: float, n: int) -> np.ndarray:
        op = trait.operator
        columns = self.traits.get((trait.source, tuple(trait.path)))
        if columns is None:
            return np.full(n, op == Op.OPERATOR_IS_MISSING)
        present = columns.present[:n]
        if op == Op.OPERATOR_EXISTS:
            return present.copy()
        if op == Op.OPERATOR_IS_MISSING:
            return ~present
        literals = [literal_value(v, now) for v in trait.values]
        if op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN, Op.OPERATOR_NOT_EQUALS):
            equal = np.logical_or.reduce([self._test(columns, Op.OPERATOR_EQUALS, k, v, n) for k, v in literals])
            return equal if op == Op.OPERATOR_IN else present & ~equal
        if op == Op.OPERATOR_BETWEEN:
            (kind, low), (_, high) = literals
            return self._test(columns, Op.OPERATOR_GREATER_OR_EQUAL, kind, low, n) & self._test(
                columns, Op.OPERATOR_LESS_OR_EQUAL, kind, high, n
            )
        kind, literal = literals[0]
        return self._test(columns, op, kind, literal, n)

    def _test(self, columns: TraitColumns, op: int, kind: str, literal: Any, n: int) -> np.ndarray:
        """One comparison of the values of `kind` with the literal; False for other kinds."""
        if kind == "number" or kind == "time":
            values = columns.number if kind == "number" else columns.time
            # NaN (no value of this kind) compares False with everything.
            return np.zeros(n, bool) if values is None else self._compare(op, values[:n], literal)
        if kind == "bool":
            return np.zeros(n, bool) if columns.flag is None else columns.flag[:n] == int(literal)
        if columns.code is None:
            return np.zeros(n, bool)
        codes = columns.code[:n]
        if op == Op.OPERATOR_EQUALS:
            code = columns.codes.get(literal)
            return np.zeros(n, bool) if code is None else codes == code
        if op == Op.OPERATOR_CONTAINS:
            table = columns.table((op, literal), lambda s: literal in s)
        elif op == Op.OPERATOR_STARTS_WITH:
            table = columns.table((op, literal), lambda s: s.startswith(literal))
        elif op == Op.OPERATOR_ENDS_WITH:
            table = columns.table((op, literal), lambda s: s.endswith(literal))
        elif op == Op.OPERATOR_MATCHES:
            regex = pattern(literal)
            table = columns.table((op, literal), lambda s: regex.search(s) is not None)
        else:  # an ordering: code point order, as Python's (and the plain evaluator's)
            order = ORDERINGS[op]
            table = columns.table((op, literal), lambda s: order(s, literal))
        # One lookup per row: a code indexes the table; -1 (no string) reads the appended False.
        return np.append(table, False)[codes]
