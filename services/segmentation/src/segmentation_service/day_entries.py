"""The days of one event (its daily counts, or one series' partials) over the view's rows, sparse.

A profile has events on a few of the days kept, so a row's days are entries in parallel arrays
(row, day, and the values), not a day-by-row matrix: a dense ring of the 96 days kept costs
192 B a row for a count alone (1,000,000 rows: 192 MB an event name, allocated for every row as
soon as one profile has the event), where a row with events on 5 days holds 5 entries of 8 B.
A window is a mask over the entries' days and a `bincount` (or `minimum.at`) of those it picks
into one value per row.

A day is a uint16 epoch day (up to 2149): half the bytes of the mask's pass, and 0 (1970-01-01,
never a day kept) marks a hole. A row's entries are one contiguous block (`start[row]`,
`length[row]`: 5 B a row). Putting a row replaces its block whole: the old entries become holes,
and the arrays are compacted when holes are most of them. Compacting also drops the days before
the oldest still kept, so a row not put again does not keep expired days for ever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from mosaic.segmentation.v1 import segment_pb2 as pb

INITIAL = 64
HOLE = 0
COMPACT_AFTER = 1024  # holes, and at least half the entries
# A row holds at most the days kept (96), so its length fits a byte.
LENGTH = np.uint8


class DayEntries:
    """Entries of (row, day, *values), the values named and typed by `values`. A day's values
    go in and come out as the value itself when there is one (a count), else as a tuple in the
    order of `values` (a series' partial)."""

    def __init__(self, values: Mapping[str, DTypeLike]) -> None:
        self.size = 0  # entries used, holes included
        self.holes = 0
        self.start = np.zeros(INITIAL, np.int32)
        self.length = np.zeros(INITIAL, LENGTH)
        self.row = np.zeros(INITIAL, np.int32)
        self.day = np.zeros(INITIAL, np.uint16)
        self.values: dict[str, np.ndarray] = {name: np.zeros(INITIAL, dtype) for name, dtype in values.items()}
        self._only = next(iter(values)) if len(values) == 1 else None  # the one value's name, if one

    def _arrays(self) -> list[tuple[str, np.ndarray, int]]:
        """Each array of entries, with the value of an unused (or hole) entry."""
        arrays: list[tuple[str, np.ndarray, int]] = [("row", self.row, 0), ("day", self.day, HOLE)]
        return arrays + [(name, array, 0) for name, array in self.values.items()]

    def _clear(self, row: int) -> None:
        if row < len(self.length) and self.length[row]:
            start, length = int(self.start[row]), int(self.length[row])
            self.day[start : start + length] = HOLE
            self.holes += length
            self.length[row] = 0

    def put(self, row: int, days: dict[int, Any], oldest: int) -> None:
        """The row's days, each with its values (replacing what it held; none clears it).
        `oldest`: days before it are expired (dropped when compacting)."""
        self._clear(row)
        if days:
            self._fit_rows(row + 1)
            count = len(days)
            at = self._room(count, oldest)
            self.row[at : at + count] = row
            self.day[at : at + count] = list(days)
            if self._only is not None:
                self.values[self._only][at : at + count] = list(days.values())
            else:
                for index, array in enumerate(self.values.values()):
                    array[at : at + count] = [values[index] for values in days.values()]
            self.start[row], self.length[row] = at, count
        elif self.holes > COMPACT_AFTER and self.holes * 2 > self.size:
            self._compact(oldest)

    def add(self, rows: np.ndarray, days: np.ndarray, values: Sequence[np.ndarray], oldest: int) -> None:
        """Entries of rows put without any (a rebuild's page a column at a time): each row's
        entries in the order given; a row that held some has them replaced."""
        if not len(rows):
            return
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        held, first, counts = np.unique(rows, return_index=True, return_counts=True)
        self._fit_rows(int(held[-1]) + 1)
        for row in held[self.length[held] > 0].tolist():
            self._clear(row)
        count = len(rows)
        at = self._room(count, oldest)
        self.row[at : at + count] = rows
        self.day[at : at + count] = days[order]
        for array, column in zip(self.values.values(), values, strict=True):
            array[at : at + count] = column[order]
        self.start[held], self.length[held] = at + first, counts

    def days(self, row: int) -> dict[int, Any]:
        """The row's days, in the order they were put, each with its values."""
        length = int(self.length[row]) if row < len(self.length) else 0
        if not length:
            return {}
        start = int(self.start[row])
        days = self.day[start : start + length].tolist()
        if self._only is not None:
            return dict(zip(days, self.values[self._only][start : start + length].tolist(), strict=True))
        columns = [array[start : start + length].tolist() for array in self.values.values()]
        return dict(zip(days, zip(*columns, strict=True), strict=True))

    def _fit_rows(self, rows: int) -> None:
        if rows > len(self.start):
            capacity = max(rows, 2 * len(self.start))
            self.start = _grown(self.start, capacity, 0)
            self.length = _grown(self.length, capacity, 0)

    def _room(self, more: int, oldest: int) -> int:
        """Where `more` new entries go (at the end: compacted first if holes are most)."""
        if self.size + more > len(self.row) and self.holes * 2 > self.size:
            self._compact(oldest)
        capacity = len(self.row)
        while self.size + more > capacity:
            capacity *= 2
        if capacity > len(self.row):
            for name, array, fill in self._arrays():
                grown = _grown(array, capacity, fill)
                if name in self.values:
                    self.values[name] = grown
                else:
                    setattr(self, name, grown)
        at = self.size
        self.size += more
        return at

    def _compact(self, oldest: int) -> None:
        """Drop the holes and the expired days; each row's block stays contiguous, in order."""
        size = self.size
        kept = np.flatnonzero(self.day[:size] >= max(oldest, HOLE + 1))
        n = len(kept)
        for _, array, fill in self._arrays():
            array[:n] = array[kept]
            array[n:size] = fill
        self.length[:] = 0
        rows = self.row[:n]
        if n:
            # A row has one block left, so its entries are neighbours: a block starts where the row changes.
            starts = np.flatnonzero(np.append(True, rows[1:] != rows[:-1]))
            self.start[rows[starts]] = starts
            self.length[rows[starts]] = np.diff(np.append(starts, n))
        self.size, self.holes = n, 0

    def aggregate(self, aggregate: int, first: int, last: int, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(value, has) per row of the first n, over the days first to last: as
        evaluate._series_value, `has` False where it gives None (None: a count or sum, which
        every row has). A count reads `count`; the others read `sum`, `min` and `max` too."""
        first = max(first, HOLE + 1)
        # day - first wraps round for the days before first: one comparison picks the window.
        offset = np.subtract(self.day[: self.size], np.uint16(first))
        picked = np.flatnonzero(offset <= np.uint16(last - first)) if last >= first else np.empty(0, np.intp)
        rows = self.row[picked]  # every row is below n

        def of(name: str) -> np.ndarray:
            return self.values[name][picked]

        if aggregate == pb.AGGREGATE_SUM:
            return np.bincount(rows, weights=of("sum"), minlength=n), None
        count = np.bincount(rows, weights=of("count"), minlength=n)
        if aggregate == pb.AGGREGATE_COUNT:
            return count, None
        has = count > 0
        if aggregate == pb.AGGREGATE_AVERAGE:
            total = np.bincount(rows, weights=of("sum"), minlength=n)
            return np.divide(total, count, out=np.zeros(n), where=has), has
        if aggregate == pb.AGGREGATE_MIN:
            value = np.full(n, np.inf)
            np.minimum.at(value, rows, of("min"))
        else:
            value = np.full(n, -np.inf)
            np.maximum.at(value, rows, of("max"))
        return value, has

    def nbytes(self) -> int:
        return self.start.nbytes + self.length.nbytes + sum(array.nbytes for _, array, _ in self._arrays())


def _grown(array: np.ndarray, capacity: int, fill) -> np.ndarray:
    grown = np.full(capacity, fill, array.dtype)
    grown[: len(array)] = array
    return grown
