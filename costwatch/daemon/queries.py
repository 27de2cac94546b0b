"""The read side's canned queries and offline maintenance: status summary, reprice, Parquet export.

They take a cursor (or a path), never the writer: `costwatch status` reads on any cursor,
`reprice` runs inside `Store.call` (the writer's transaction) or on a file no daemon holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from costwatch.daemon import schema
from costwatch.daemon.database import open_database
from costwatch.pricing import Pricer

__all__ = ["export_parquet", "reprice", "reprice_file", "summary"]


def _unregister(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow view without masking the error that aborted the transaction."""
    try:
        cur.unregister(name)
    except duckdb.Error:
        pass


def summary(cur: duckdb.DuckDBPyConnection, tz: str = "UTC") -> dict[str, Any]:
    """What `costwatch status` shows: counts and spend today / month to date in ``tz``."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo(tz))
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    row = cur.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {schema.UNPRICED_SQL}),"
        " count(*) FILTER (WHERE usage_source = 'missing'),"
        " coalesce(sum(cost_usd) FILTER (WHERE ts_start >= ?), 0),"
        " coalesce(sum(cost_usd) FILTER (WHERE ts_start >= ?), 0),"
        " epoch(min(ts_start)), epoch(max(ts_start)), epoch(max(ingested_at)),"
        " count(*) FILTER (WHERE usage_source = 'estimated'),"
        " coalesce(sum(cost_usd) FILTER (WHERE ts_start >= ? AND usage_source = 'estimated'), 0)"
        " FROM usage_events",
        [day, month, month],
    ).fetchone()
    assert row is not None
    return {
        "events": row[0],
        "unpriced": row[1],
        "usage_missing": row[2],
        "usage_estimated": row[8],  # streams that ended without usage: tokens estimated, priced
        "spend_today_usd": row[3],
        "spend_month_usd": row[4],
        "spend_month_estimated_usd": row[9],  # the part of spend_month_usd from estimated usage
        "first_event_ts": row[5],
        "last_event_ts": row[6],
        "last_ingest_ts": row[7],
        "timezone": tz,
    }


# What `Pricer.price_table` reads of each stored row (and the id to write the prices back).
_REPRICE_COLUMNS = (
    "id, provider, model, response_model, request_model, input_tokens, output_tokens,"
    " cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, usage_source, ts_start,"
    " service_tier, speed, inference_geo, provider_cost_usd"
)


def reprice(cur: duckdb.DuckDBPyConnection, pricer: Pricer, since: float | None) -> dict[str, int]:
    """Recompute the cost columns of rows with ts_start >= since (all rows when None), per column."""
    lo = since if since is not None else 0.0
    rows = cur.sql(
        f"SELECT {_REPRICE_COLUMNS} FROM usage_events WHERE ts_start >= to_timestamp(?)", params=[lo]
    ).to_arrow_table()
    prices = pricer.price_table(rows)
    cur.register("_cw_reprice", pa.table({"id": rows["id"], **prices}))
    try:
        cur.execute(
            "UPDATE usage_events SET cost_usd = b.cost_usd, input_cost_usd = b.input_cost_usd,"
            " output_cost_usd = b.output_cost_usd, priced = b.priced, price_source = b.price_source,"
            " price_version = b.price_version, computed_cost_usd = b.computed_cost_usd,"
            " cost_source = b.cost_source FROM _cw_reprice b"
            " WHERE usage_events.id = b.id AND usage_events.ts_start >= to_timestamp(?)",
            [lo],
        )
    finally:
        _unregister(cur, "_cw_reprice")
    return {"repriced": rows.num_rows, "priced": pc.sum(prices["priced"]).as_py() or 0}


def reprice_file(path: Path, pricer: Pricer, since: float | None, **open_kwargs: Any) -> dict[str, int]:
    """`costwatch reprice` when no daemon runs: open the file, reprice in one transaction."""
    con = open_database(path, **open_kwargs)
    try:
        con.execute("BEGIN")
        result = reprice(con, pricer, since)
        con.execute("COMMIT")
        return result
    finally:
        con.close()


def export_parquet(cur: duckdb.DuckDBPyConnection, directory: Path, since: float | None) -> dict[str, Any]:
    """Write ``DIR/date=YYYY-MM-DD/usage_events.parquet`` per UTC day (one day in memory at a time).

    ``since`` is rounded down to its UTC midnight, so every file holds a whole day.

    The database has external access off, so DuckDB's COPY cannot write files:
    pyarrow writes what DuckDB hands over as Arrow.
    """
    import pyarrow.parquet as pq

    # Whole UTC days only: a partial first day would overwrite a complete earlier export.
    lo = (since // 86_400) * 86_400 if since is not None else 0.0
    days = [
        row[0]
        for row in cur.execute(
            "SELECT DISTINCT CAST(timezone('UTC', ts_start) AS DATE) AS d FROM usage_events"
            " WHERE ts_start >= to_timestamp(?) ORDER BY d",
            [lo],
        ).fetchall()
    ]
    files: list[str] = []
    total = 0
    for day in days:
        table = cur.sql(  # a relation, not a DB-API result: Arrow without an extra copy
            "SELECT * FROM usage_events WHERE CAST(timezone('UTC', ts_start) AS DATE) = ?"
            " AND ts_start >= to_timestamp(?) ORDER BY ts_start",
            params=[day, lo],
        ).to_arrow_table()
        target = directory / f"date={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        path = target / "usage_events.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        files.append(str(path))
        total += table.num_rows
    return {"files": files, "rows": total}
