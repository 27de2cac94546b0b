"""The stored `day` column: written by the writer in the configured zone, backfilled by migration 2,
recomputed when the zone changes, and what `spend_by_day` groups by."""

from __future__ import annotations

from pathlib import Path

import duckdb

from costwatch.daemon import schema
from costwatch.daemon.database import migrate
from costwatch.daemon.store import Store
from costwatch.pricing import Pricer
from tests.daemon.conftest import make_event

# 2026-01-02 03:00 UTC: still 2026-01-01 in New York, already 2026-01-02 in Tokyo.
EDGE = 1767322800.0


def _days(store: Store) -> list[tuple[str, str, float]]:
    return store.read(
        lambda cur: cur.execute(
            "SELECT CAST(day AS VARCHAR), CAST(CAST(ts_start AS DATE) AS VARCHAR), epoch(ts_start)"
            " FROM usage_events ORDER BY ts_start"
        ).fetchall()
    )


def test_writer_stores_local_day_and_zone_change_recomputes(tmp_path: Path) -> None:
    path = tmp_path / "d.duckdb"
    store = Store(path, Pricer(), timezone="America/New_York")
    try:
        events = [make_event(ts=EDGE), make_event(ts=EDGE + 86_400), make_event(ts=EDGE - 3 * 3600)]
        assert store.submit(events).result(10).accepted == 3
        rows = _days(store)
        assert [r[0] for r in rows] == ["2026-01-01", "2026-01-01", "2026-01-02"]
        assert all(day == cast for day, cast, _ in rows)  # the same as the per-row conversion
        by_day = store.read(
            lambda cur: cur.execute("SELECT CAST(day AS VARCHAR), requests FROM spend_by_day").fetchall()
        )
        assert by_day == [("2026-01-01", 2), ("2026-01-02", 1)]
    finally:
        store.close()
    store = Store(path, Pricer(), timezone="Asia/Tokyo")
    try:
        rows = _days(store)
        assert [r[0] for r in rows] == ["2026-01-02", "2026-01-02", "2026-01-03"]
        assert all(day == cast for day, cast, _ in rows)
        zone = store.read(
            lambda cur: cur.execute(
                "SELECT value FROM storage_settings WHERE key = 'day_timezone'"
            ).fetchone()
        )
        assert zone == ("Asia/Tokyo",)
    finally:
        store.close()


def test_migration_2_backfills_a_version_1_file(tmp_path: Path) -> None:
    """A file written before the column existed gets every row's day, in the zone it is opened with."""
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'America/New_York'")
    con.execute("CREATE TABLE schema_migrations (version INTEGER, applied_at TIMESTAMPTZ)")
    for statement in schema.MIGRATIONS[0][1]():
        con.execute(statement)
    con.execute("INSERT INTO schema_migrations VALUES (1, now())")
    con.execute(
        "INSERT INTO usage_events (id, call_id, ts_start, ts_end, provider, operation, app, host, pid,"
        " stream, usage_source, tags, blocked, schema_version, priced, ingested_at)"
        " VALUES ('a', 'a', to_timestamp(?), to_timestamp(?), 'openai', 'chat', 'x', 'h', 1, false,"
        " 'provider', MAP {}, false, 1, false, now())",
        [EDGE, EDGE],
    )
    con.close()
    store = Store(path, Pricer(), timezone="America/New_York")
    try:
        assert _days(store)[0][0] == "2026-01-01"
        versions = store.read(
            lambda cur: cur.execute("SELECT max(version) FROM schema_migrations").fetchone()
        )
        assert versions == (len(schema.MIGRATIONS),)
        assert store.submit([make_event(ts=EDGE + 60)]).result(10).accepted == 1
        assert [r[0] for r in _days(store)] == ["2026-01-01", "2026-01-01"]
    finally:
        store.close()
    con = duckdb.connect(str(path))
    try:
        migrate(con)  # idempotent: nothing left to apply
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(schema.MIGRATIONS),)
    finally:
        con.close()
