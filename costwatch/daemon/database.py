"""Opening the DuckDB file: sandboxed configuration, migrations, the stored days' time zone.

The writer (`costwatch.daemon.store.Store`) and every offline command open the file here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb

from costwatch.daemon import schema

__all__ = ["WAL_AUTOCHECKPOINT", "migrate", "open_database"]

log = logging.getLogger("costwatch.daemon.store")
# An upper bound on the WAL only: the writer checkpoints every `store.CHECKPOINT_ROWS` committed rows
# and when ingest pauses (`Store._run`), so under the default it is reached only when a checkpoint
# keeps failing (a long read open, a full disk).
WAL_AUTOCHECKPOINT = "256MB"


def open_database(
    path: Path,
    *,
    read_only: bool = False,
    memory_limit: str = "1GB",
    threads: int = 2,
    timezone: str = "UTC",
    wal_autocheckpoint: str = WAL_AUTOCHECKPOINT,
) -> duckdb.DuckDBPyConnection:
    """Open the file sandboxed: no file/network access from SQL, configuration locked.

    ``enable_external_access=false`` is database-wide, so the ad-hoc SQL path
    cannot read local files or URLs; Arrow ingest still works because the
    writer registers its tables explicitly.
    """
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "enable_external_access": False,
        "memory_limit": memory_limit,
        "threads": threads,
    }
    if not read_only:
        # The writer checkpoints itself, between commits (every `store.CHECKPOINT_ROWS` rows and
        # when ingest pauses); this bound only keeps a WAL from growing without end when those
        # checkpoints fail. At DuckDB's 16 MB default a checkpoint landed inside every few
        # commits, before their acknowledgements: 2/3 of the commit time (benchmarks §2).
        config["wal_autocheckpoint"] = wal_autocheckpoint
    con = duckdb.connect(str(path), read_only=read_only, config=config)
    try:
        # GLOBAL: every cursor (the SQL endpoint opens one per query) is a new session.
        con.execute(f"SET GLOBAL TimeZone = '{_quote(timezone)}'")  # validated by settings (zoneinfo)
        if not read_only:
            migrate(con)
            _recompute_days(con)
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _quote(value: str) -> str:
    return value.replace("'", "''")


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER, applied_at TIMESTAMPTZ)")
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, statements in schema.MIGRATIONS:
        if version in done:
            continue
        con.execute("BEGIN")
        for statement in statements():
            con.execute(statement)
        con.execute("INSERT INTO schema_migrations VALUES (?, now())", [version])
        con.execute("COMMIT")


def _recompute_days(con: duckdb.DuckDBPyConnection) -> None:
    """Stored days follow the configured time zone: recompute them all when it changed."""
    row = con.execute("SELECT value FROM storage_settings WHERE key = 'day_timezone'").fetchone()
    current = con.execute("SELECT current_setting('TimeZone')").fetchone()
    assert current is not None
    if row is not None and row[0] == current[0]:
        return
    con.execute("BEGIN")
    con.execute("UPDATE usage_events SET day = CAST(ts_start AS DATE)")
    con.execute(
        "INSERT OR REPLACE INTO storage_settings VALUES ('day_timezone', ?)",
        [current[0]],
    )
    con.execute("COMMIT")
    log.info("time zone changed to %s: recomputed the stored day of every event", current[0])
