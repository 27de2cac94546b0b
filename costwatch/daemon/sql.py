"""Read-only ad-hoc SQL: the one query function behind `POST /v1/sql` and `costwatch sql`.

Defence in layers (each held on its own in FINDINGS' tests): the database is
opened with external access off and its configuration locked (no file, URL,
ATTACH, INSTALL or SET); each query gets a fresh cursor inside
``BEGIN TRANSACTION READ ONLY``; exactly one SELECT/EXPLAIN statement is
accepted; a timer interrupts it after the time limit; rows are capped.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import duckdb
import msgspec

__all__ = ["QueryError", "QueryResult", "run_query", "to_csv", "to_json"]

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(Exception):
    """A refused or failed query; the message is one line meant for the user."""


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool = False
    elapsed_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "types": self.types,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "elapsed_ms": round(self.elapsed_ms, 3),
        }


def check_statement(sql: str) -> None:
    """Accept exactly one SELECT (WITH, FROM, DESCRIBE, SHOW…) or EXPLAIN statement."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(_one_line(exc)) from None
    if not statements:
        raise QueryError("no SQL statement given")
    if len(statements) > 1:
        raise QueryError(f"exactly one statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind not in _ALLOWED:
        name = getattr(kind, "name", str(kind))
        raise QueryError(f"only read-only SELECT/EXPLAIN queries are allowed (got {name})")


def run_query(
    con: duckdb.DuckDBPyConnection, sql: str, *, timeout_s: float = 10.0, max_rows: int = 100_000
) -> QueryResult:
    """Run one read-only query on a fresh cursor of ``con`` (the daemon's or a read-only one)."""
    check_statement(sql)
    cur = con.cursor()
    timer = threading.Timer(timeout_s, cur.interrupt)
    started = time.perf_counter()
    try:
        cur.execute("BEGIN TRANSACTION READ ONLY")
        timer.start()
        try:
            cur.execute(sql)
            rows = cur.fetchmany(max_rows + 1)
        except duckdb.InterruptException:
            raise QueryError(f"query cancelled after the {timeout_s:g} s time limit") from None
        except duckdb.Error as exc:
            raise QueryError(_one_line(exc)) from None
        description = cur.description or []
        truncated = len(rows) > max_rows
        return QueryResult(
            columns=[d[0] for d in description],
            types=[str(d[1]) for d in description],
            rows=rows[:max_rows],
            truncated=truncated,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )
    finally:
        timer.cancel()
        try:
            cur.execute("ROLLBACK")
        except duckdb.Error:
            pass
        cur.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _plain(value: Any) -> Any:
    """JSON-friendly value for types msgspec does not encode natively."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | bytes | memoryview):
        return str(value) if not isinstance(value, bytes | memoryview) else bytes(value).hex()
    return str(value)


_json = msgspec.json.Encoder(enc_hook=_plain, decimal_format="number")


def to_json(result: QueryResult) -> bytes:
    return _json.encode(result.as_dict())


def encode(obj: Any) -> bytes:
    return _json.encode(obj)


def to_csv(columns: list[str], rows: list[Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()
