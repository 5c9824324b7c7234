"""One event series over the view's rows, sparse: the columnar form of ProfileState.series.

A series has entries only for the days a profile had matching events, so it is kept as parallel
arrays of entries (row, day, count, sum, min, max), not a day-by-row matrix as the counters are:
a dense float matrix of the days kept would cost ~3 KB a profile for each series. A window is a
mask over the entries and a `bincount` (or `minimum.at`) into one value per row.

A row's entries are a linked list (`head[row]`, then `next` of each entry): 4 B a row and 40 B
an entry in all. They are replaced whole when the row is put: the old ones become holes (count 0,
day -1), and the arrays are compacted when holes are most of them.
"""

from __future__ import annotations

import numpy as np

from mosaic.segmentation.v1 import segment_pb2 as pb
from segmentation_service.state import Partial

INITIAL = 64
NONE = -1
# Each array of entries, with the value of an unused (or hole) entry.
ENTRY_ARRAYS = {
    "row": (np.int32, 0),
    "day": (np.int32, NONE),
    "count": (np.int32, 0),
    "sum": (np.float64, 0.0),
    "min": (np.float64, 0.0),
    "max": (np.float64, 0.0),
    "next": (np.int32, NONE),
}


class SeriesColumns:
    def __init__(self) -> None:
        self.size = 0  # entries used, holes included
        self.holes = 0
        self.head = np.full(INITIAL, NONE, np.int32)  # a row's latest entry
        self.row = self.day = self.count = self.next = np.empty(0, np.int32)
        self.sum = self.min = self.max = np.empty(0, np.float64)
        for name, (dtype, fill) in ENTRY_ARRAYS.items():
            setattr(self, name, np.full(INITIAL, fill, dtype))

    def _entries(self, row: int) -> list[int]:
        found = []
        index = int(self.head[row]) if row < len(self.head) else NONE
        while index != NONE:
            found.append(index)
            index = int(self.next[index])
        return found

    def put(self, row: int, days: dict[int, Partial]) -> None:
        """The row's days (replacing what it held; none clears it)."""
        for index in self._entries(row):
            self.count[index], self.day[index], self.next[index] = 0, NONE, NONE
            self.holes += 1
        if row < len(self.head):
            self.head[row] = NONE
        if days:
            if row >= len(self.head):
                self.head = _grown(self.head, max(row + 1, 2 * len(self.head)), NONE)
            if self.size + len(days) > len(self.row):
                self._make_room(len(days))
            for day, (count, summed, smallest, largest) in days.items():
                index = self.size
                self.size += 1
                self.row[index], self.day[index], self.count[index] = row, day, count
                self.sum[index], self.min[index], self.max[index] = summed, smallest, largest
                self.next[index], self.head[row] = self.head[row], index
        if self.holes > 1024 and self.holes * 2 > self.size:
            self._compact()

    def days(self, row: int) -> dict[int, Partial]:
        """The row's days, in the order they were put."""
        return {
            int(self.day[i]): (int(self.count[i]), float(self.sum[i]), float(self.min[i]), float(self.max[i]))
            for i in reversed(self._entries(row))
        }

    def _make_room(self, more: int) -> None:
        if self.holes * 2 > self.size:
            self._compact()
        capacity = len(self.row)
        while self.size + more > capacity:
            capacity *= 2
        for name, (_, fill) in ENTRY_ARRAYS.items():
            setattr(self, name, _grown(getattr(self, name), capacity, fill))

    def _compact(self) -> None:
        """Drop the holes; a row's entries end up next to each other, in the order they were put."""
        kept = np.flatnonzero(self.count[: self.size] > 0)
        kept = kept[np.argsort(self.row[kept], kind="stable")]
        n = len(kept)
        for name, (_, fill) in ENTRY_ARRAYS.items():
            if name != "next":
                array = getattr(self, name)
                array[:n] = array[kept]
                array[n : self.size] = fill
        rows = self.row[:n]
        same = rows[1:] == rows[:-1]
        # Linked from the latest entry back: each entry's next is the one before it of its row.
        self.next[:n] = NONE
        self.next[1:n][same] = np.arange(n - 1, dtype=np.int32)[same]
        self.next[n : self.size] = NONE
        self.head[:] = NONE
        last = np.flatnonzero(np.append(~same, True))  # each row's last entry
        self.head[rows[last]] = last
        self.size, self.holes = n, 0

    def aggregate(self, aggregate: int, first: int, last: int, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(value, has) per row of the first n, over the days first to last: as
        evaluate._series_value, `has` False where it gives None (None: a count or sum, which
        every row has)."""
        size = self.size
        day = self.day[:size]
        chosen = (day >= first) & (day <= last)  # holes have day -1; every row is below n
        rows = self.row[:size][chosen]
        if aggregate == pb.AGGREGATE_SUM:
            return np.bincount(rows, weights=self.sum[:size][chosen], minlength=n), None
        count = np.bincount(rows, weights=self.count[:size][chosen], minlength=n)
        if aggregate == pb.AGGREGATE_COUNT:
            return count, None
        has = count > 0
        if aggregate == pb.AGGREGATE_AVERAGE:
            total = np.bincount(rows, weights=self.sum[:size][chosen], minlength=n)
            return np.divide(total, count, out=np.zeros(n), where=has), has
        if aggregate == pb.AGGREGATE_MIN:
            value = np.full(n, np.inf)
            np.minimum.at(value, rows, self.min[:size][chosen])
        else:
            value = np.full(n, -np.inf)
            np.maximum.at(value, rows, self.max[:size][chosen])
        return value, has

    def nbytes(self) -> int:
        return self.head.nbytes + sum(getattr(self, name).nbytes for name in ENTRY_ARRAYS)


def _grown(array: np.ndarray, capacity: int, fill) -> np.ndarray:
    grown = np.full(capacity, fill, array.dtype)
    grown[: len(array)] = array
    return grown
