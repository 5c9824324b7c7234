"""How every list prints: a table on a terminal, one JSON object a line otherwise (a pipe, a
file), streamed as pages come, for scripts and `jq`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

HELP = "On a terminal a table; piped or redirected, one JSON object a line."


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # where the cell's value is in a row: a dotted path
    shown: Callable[[Any], str] = _text
    right: bool = False  # numbers

    def cell(self, row: dict[str, Any]) -> str:
        value: Any = row
        for part in self.key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return self.shown(value)


def enum(prefix: str) -> Callable[[Any], str]:
    """An enum's JSON name without its prefix, in lower case: EVENT_STATUS_ACCEPTED -> accepted."""
    return lambda value: "" if value is None else str(value).removeprefix(prefix).lower()


class Listing:
    """`with Listing(columns) as out: out.add(row)`: rows are the JSON form; the table shows columns."""

    def __init__(self, columns: Sequence[Column], console: Console | None = None) -> None:
        self.console = console or Console()
        self.columns = columns
        self.table: Table | None = None
        if self.console.is_terminal:
            self.table = Table()
            for column in columns:
                self.table.add_column(column.header, justify="right" if column.right else "left")

    def add(self, row: dict[str, Any]) -> None:
        if self.table is None:
            self.console.file.write(json.dumps(row) + "\n")
        else:
            self.table.add_row(*(column.cell(row) for column in self.columns))

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self.table is not None and kind is None:
            self.console.print(self.table)
