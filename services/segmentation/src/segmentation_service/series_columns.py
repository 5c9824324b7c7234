"""One event series over the view's rows, sparse: the columnar form of ProfileState.series.

A series has entries only for the days a profile had matching events, so it is kept as parallel
arrays of entries (row, day, count, sum, min, max), not a day-by-row matrix as the counters are:
a dense float matrix of the days kept would cost ~3 KB a profile for each series. A window is a
mask over the entries and a `bincount` (or `minimum.at`) into one value per row.

A row's entries are replaced whole when the row is put: the old ones become holes (count 0,
day -1), and the arrays are compacted when holes are most of them.
"""

from __future__ import annotations

import numpy as np

from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service.state import Partial

INITIAL = 64


class SeriesColumns:
    def __init__(self) -> None:
        self.size = 0  # entries used, holes included
        self.holes = 0
        self.row = np.zeros(INITIAL, np.int64)
        self.day = np.full(INITIAL, -1, np.int64)
        self.count = np.zeros(INITIAL, np.float64)
        self.sum = np.zeros(INITIAL, np.float64)
        self.min = np.zeros(INITIAL, np.float64)
        self.max = np.zeros(INITIAL, np.float64)
        self.entries: dict[int, list[int]] = {}  # row -> its entries' indexes

    def put(self, row: int, days: dict[int, Partial]) -> None:
        """The row's days (replacing what it held; none clears it)."""
        for index in self.entries.pop(row, ()):
            self.count[index], self.day[index] = 0, -1
            self.holes += 1
        if days:
            if self.size + len(days) > len(self.row):
                self._make_room(len(days))
            start = self.size
            self.size += len(days)
            self.entries[row] = list(range(start, self.size))
            for index, (day, (count, summed, smallest, largest)) in enumerate(days.items(), start):
                self.row[index], self.day[index], self.count[index] = row, day, count
                self.sum[index], self.min[index], self.max[index] = summed, smallest, largest
        if self.holes > 1024 and self.holes * 2 > self.size:
            self._compact()

    def days(self, row: int) -> dict[int, Partial]:
        return {
            int(self.day[i]): (int(self.count[i]), float(self.sum[i]), float(self.min[i]), float(self.max[i]))
            for i in self.entries.get(row, ())
        }

    def _arrays(self) -> tuple[str, ...]:
        return ("row", "day", "count", "sum", "min", "max")

    def _make_room(self, more: int) -> None:
        if self.holes * 2 > self.size:
            self._compact()
        capacity = len(self.row)
        while self.size + more > capacity:
            capacity *= 2
        for name in self._arrays():
            old = getattr(self, name)
            grown = np.full(capacity, -1 if name == "day" else 0, old.dtype)
            grown[: self.size] = old[: self.size]
            setattr(self, name, grown)

    def _compact(self) -> None:
        kept = np.flatnonzero(self.count[: self.size] > 0)
        for name in self._arrays():
            array = getattr(self, name)
            array[: len(kept)] = array[kept]
            array[len(kept) : self.size] = -1 if name == "day" else 0
        self.size, self.holes = len(kept), 0
        self.entries = {}
        for index, row in enumerate(self.row[: self.size].tolist()):
            self.entries.setdefault(row, []).append(index)

    def aggregate(self, aggregate: int, first: int, last: int, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(value, has) per row of the first n, over the days first to last: as
        evaluate._series_value, `has` False where it gives None (None: a count or sum, which
        every row has)."""
        size = self.size
        day = self.day[:size]
        chosen = (day >= first) & (day <= last) & (self.row[:size] < n)
        rows = self.row[:size][chosen]
        count = np.bincount(rows, weights=self.count[:size][chosen], minlength=n)
        if aggregate == pb.AGGREGATE_COUNT:
            return count, None
        total = np.bincount(rows, weights=self.sum[:size][chosen], minlength=n)
        if aggregate == pb.AGGREGATE_SUM:
            return total, None
        has = count > 0
        if aggregate == pb.AGGREGATE_AVERAGE:
            return np.divide(total, count, out=np.zeros(n), where=has), has
        if aggregate == pb.AGGREGATE_MIN:
            value = np.full(n, np.inf)
            np.minimum.at(value, rows, self.min[:size][chosen])
        else:
            value = np.full(n, -np.inf)
            np.maximum.at(value, rows, self.max[:size][chosen])
        return value, has

    def nbytes(self) -> int:
        """The arrays' bytes and ~100 B an entry of the row index."""
        return sum(getattr(self, name).nbytes for name in self._arrays()) + 100 * (self.size - self.holes)
