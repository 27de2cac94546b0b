"""Read-only SQL on the fleet ledger: `costwatch sql --fleet` and ``POST /v1/sql?fleet=1``.

Layers, each enough on its own against writes: the query runs on ``fleet_sql_dsn`` when set
(a role with SELECT only, docs/fleet.md), inside ``BEGIN READ ONLY`` with a
``statement_timeout``; it is sent as a prepared statement (Postgres accepts exactly one
statement there), and the transaction is rolled back afterwards.
Rows are capped like the local SQL path, and results come back as the same `QueryResult`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psycopg
from psycopg_pool import PoolTimeout

from costwatch.daemon.sql import QueryError, QueryResult

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["run_fleet_query"]


def run_fleet_query(
    pool: ConnectionPool,
    sql: str,
    *,
    timeout_s: float = 10.0,
    max_rows: int = 100_000,
    connect_timeout_s: float = 3.0,
) -> QueryResult:
    if not sql.strip():
        raise QueryError("no SQL statement given")
    started = time.perf_counter()
    try:
        with pool.connection(timeout=connect_timeout_s) as conn:
            conn.execute("BEGIN READ ONLY")
            try:
                conn.execute("SELECT set_config('statement_timeout', %s, true)", [str(int(timeout_s * 1000))])
                with conn.cursor() as cur:
                    # prepare=True: the extended protocol, which takes exactly one statement (without
                    # it psycopg sends a query without parameters as a simple query, where
                    # "COMMIT; DELETE …" would leave the read-only transaction).
                    cur.execute(sql.encode(), prepare=True)
                    if cur.description is None:
                        raise QueryError("only queries that return rows are allowed")
                    rows = cur.fetchmany(max_rows + 1)
                    columns = [d.name for d in cur.description]
                    types = []
                    for d in cur.description:
                        info = conn.adapters.types.get(d.type_code)
                        types.append(info.name if info is not None else str(d.type_code))
            finally:
                conn.rollback()
    except QueryError:
        raise
    except PoolTimeout as exc:
        raise QueryError(f"the fleet ledger did not answer: {exc}") from None
    except psycopg.errors.QueryCanceled:
        raise QueryError(f"query cancelled after the {timeout_s:g} s time limit") from None
    except psycopg.Error as exc:
        line = str(exc).strip().splitlines()
        raise QueryError(line[0] if line else type(exc).__name__) from None
    except Exception as exc:
        raise QueryError(f"the fleet ledger did not answer: {exc}") from None
    truncated = len(rows) > max_rows
    return QueryResult(
        columns=columns,
        types=types,
        rows=[tuple(r) for r in rows[:max_rows]],
        truncated=truncated,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )
