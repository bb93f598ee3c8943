"""Rendering: Ganeti-style plain tables, rich tables, JSON, and value formatting.

Two styles:

* ``gnt-*`` commands print what Ganeti prints (scripts parse it): space-aligned columns
  with a header line (``--no-headers`` drops it), or fields joined by ``--separator``; sizes
  human readable (``128M``, ``1.0G``) unless a separator is given (then plain MiB, as
  Ganeti); booleans ``Y``/``N``; lists comma-joined; unavailable values ``-``, no data ``?``,
  offline ``*``, unknown field ``??``.
* ``corral`` prints the same cells in a rich table, or with ``--output json`` a JSON list of
  objects (field -> raw value, ``null`` where unavailable).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Ganeti query result status codes.
RS_NORMAL = 0
RS_UNKNOWN = 1
RS_NODATA = 2
RS_UNAVAIL = 3
RS_OFFLINE = 4

_STATUS_TEXT = {RS_UNKNOWN: "??", RS_NODATA: "?", RS_UNAVAIL: "-", RS_OFFLINE: "*"}
_STATUS_VERBOSE = {
    RS_UNKNOWN: "(unknown)",
    RS_NODATA: "(nodata)",
    RS_UNAVAIL: "(unavail)",
    RS_OFFLINE: "(offline)",
}


def format_unit(mib: Any, units: str = "h") -> str:
    """Ganeti ``FormatUnit``: ``h`` human (``512M``, ``1.5G``, ``2.0T``) or m/g/t."""
    try:
        value = float(mib)
    except (TypeError, ValueError):
        return str(mib)
    if units == "m":
        return str(int(value))
    if units == "g":
        return f"{value / 1024:.1f}"
    if units == "t":
        return f"{value / 1024 / 1024:.1f}"
    if value < 1024:
        return f"{int(value)}M"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f}G"
    return f"{value / 1024 / 1024:.1f}T"


def format_timestamp(value: Any) -> str:
    """Seconds or Ganeti ``[sec, usec]`` pairs as ``2024-01-31 12:00:00.123456``."""
    if isinstance(value, list | tuple) and len(value) == 2:
        sec, usec = int(value[0]), int(value[1])
    elif isinstance(value, int | float):
        sec, usec = int(value), int((value - int(value)) * 1_000_000)
    else:
        return str(value)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec)) + f".{usec:06d}"


def format_value(value: Any, kind: str, *, units: str = "h") -> str:
    """One cell's text for a value of a Ganeti field kind."""
    if value is None:
        return "-"
    if kind == "bool" or isinstance(value, bool):
        return "Y" if value else "N"
    if kind == "unit":
        return format_unit(value, units)
    if kind == "timestamp":
        return format_timestamp(value)
    if isinstance(value, list):
        return ",".join(format_value(v, "other", units=units) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def format_cell(cell: Sequence[Any], kind: str, *, units: str = "h", verbose: bool = False) -> str:
    """A ``[status, value]`` query cell as text."""
    status, value = cell[0], cell[1]
    if status != RS_NORMAL:
        return (_STATUS_VERBOSE if verbose else _STATUS_TEXT).get(status, "?")
    return format_value(value, kind, units=units)


def query_table(
    result: dict[str, Any], *, units: str = "h", verbose: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers (titles) and text rows of a ``/2/query`` answer."""
    fields = result["fields"]
    headers = [f["title"] for f in fields]
    rows = [
        [
            format_cell(cell, f["kind"], units=units, verbose=verbose)
            for cell, f in zip(row, fields, strict=True)
        ]
        for row in result["data"]
    ]
    return headers, rows


def query_records(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``/2/query`` answer as JSON objects (field name -> value, None if unavailable)."""
    names = [f["name"] for f in result["fields"]]
    return [
        {n: (cell[1] if cell[0] == RS_NORMAL else None) for n, cell in zip(names, row, strict=True)}
        for row in result["data"]
    ]


def plain_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    no_headers: bool = False,
    separator: str | None = None,
    numeric: Sequence[bool] | None = None,
) -> str:
    """Ganeti's ``GenerateTable`` text: aligned columns, or joined by ``separator``."""
    lines: list[list[str]] = ([] if no_headers else [list(headers)]) + [list(r) for r in rows]
    if separator is not None:
        return "".join(separator.join(line) + "\n" for line in lines)
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    numeric = list(numeric or [False] * len(headers))
    out = []
    for line in lines:
        cells = []
        for i, cell in enumerate(line):
            last = i == len(line) - 1
            if numeric[i]:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell if last else cell.ljust(widths[i]))
        out.append(" ".join(cells).rstrip() + "\n")
    return "".join(out)


def rich_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str = "") -> Table:
    """A rich table of text cells, shown verbatim.

    Cells are :class:`~rich.text.Text`, so rich interprets neither markup (``[bold]``) nor
    emoji codes (the ``:cd:`` of a MAC) in them, whatever the console's settings.
    """
    table = Table(title=title or None, show_lines=False, header_style="bold")
    for header in headers:
        table.add_column(Text(header))
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def print_json(value: Any, stream: TextIO | None = None) -> None:
    """Print ``value`` as indented JSON."""
    (stream or sys.stdout).write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def print_mapping(console: Console, data: dict[str, Any], indent: int = 0) -> None:
    """Print a nested mapping as ``key: value`` lines (Ganeti ``info`` style)."""
    pad = "  " * indent
    for key, value in data.items():
        if isinstance(value, dict) and value:
            console.print(f"{pad}{key}:", markup=False, highlight=False, emoji=False)
            print_mapping(console, value, indent + 1)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            console.print(f"{pad}{key}:", markup=False, highlight=False, emoji=False)
            for i, item in enumerate(value):
                console.print(f"{pad}  - {i}:", markup=False, highlight=False, emoji=False)
                print_mapping(console, item, indent + 2)
        else:
            text = format_value(value, "other") if not isinstance(value, str) else value
            console.print(f"{pad}{key}: {text}", markup=False, highlight=False, emoji=False)
