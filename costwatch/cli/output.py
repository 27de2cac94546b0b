"""Query results for people and programs: a table, CSV or JSON on stdout."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["print_daemon_rows", "print_rows"]


def print_daemon_rows(data: dict[str, Any], fmt: str) -> None:
    """A ``/v1/sql`` answer."""
    print_rows(data["columns"], data["rows"], fmt, data.get("truncated", False), from_daemon=True)


def print_rows(columns: list[str], rows: list[Any], fmt: str, truncated: bool, *, from_daemon: bool) -> None:
    """Rows from the daemon are JSON values already: printing them needs neither duckdb nor the sandbox."""
    if fmt == "csv":
        from costwatch.daemon.sql import to_csv

        sys.stdout.write(to_csv(columns, rows))
    elif fmt == "json":
        if from_daemon:
            from msgspec.json import encode  # the same bytes as the sandbox's encoder gives JSON values
        else:
            from costwatch.daemon.sql import encode  # dates, decimals, UUIDs straight from DuckDB
        sys.stdout.write(encode([dict(zip(columns, row, strict=True)) for row in rows]).decode() + "\n")
    else:
        _print_table(columns, [["NULL" if v is None else str(v) for v in row] for row in rows])
        if truncated:
            print(f"(truncated to {len(rows)} rows)", file=sys.stderr)
    if truncated and fmt != "table":
        print(f"costwatch: result truncated to {len(rows)} rows", file=sys.stderr)


def _print_table(columns: list[str], cells: list[list[str]]) -> None:
    """A rich table with the daemon's packages installed; aligned plain text with an app's install alone."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ModuleNotFoundError:
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        for line in (columns, ["-" * w for w in widths], *cells):
            print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
        return
    table = Table(*columns, show_lines=False)
    for row in cells:
        table.add_row(*row)
    Console().print(table)
