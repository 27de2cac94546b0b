"""Old databases migrate to exactly the columns a new one gets, in the same order."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb

from costwatch.daemon import schema
from costwatch.daemon.database import migrate
from costwatch.daemon.store import Store
from costwatch.events import EVENT_FIELDS
from costwatch.pricing import Pricer
from tests.daemon.conftest import make_event


def _columns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in con.execute("DESCRIBE usage_events").fetchall()]


_SPELLED = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}  # how DESCRIBE spells it


def _declared() -> list[tuple[str, str]]:
    declared = [
        (name, sql_type.removesuffix(" NOT NULL")) for name, sql_type in schema.stored_columns().items()
    ]
    return [(name, _SPELLED.get(sql_type, sql_type)) for name, sql_type in declared]


def test_migration_1_is_frozen() -> None:
    """Migration 1 no longer follows `UsageEvent`: its table is the one it always created."""
    events = schema.event_columns()
    columns = {name: events[name] for name in schema.V1_EVENT_FIELDS}
    columns = {**columns, **schema.DAEMON_COLUMNS, "id": "VARCHAR NOT NULL"}
    body = ",\n    ".join(f"{name} {sql_type}" for name, sql_type in columns.items())
    assert schema.MIGRATIONS[0][1]()[0] == f"CREATE TABLE usage_events (\n    {body}\n)"
    # Every event field is stored, with the type derived from the event, exactly once.
    stored = schema.stored_columns()
    assert set(EVENT_FIELDS) <= set(stored)
    assert all(stored[name].startswith(events[name]) for name in EVENT_FIELDS)
    assert len(stored) == len(set(stored))


# Each shipped migration's statements, hashed: a migration that shipped never changes (a
# database that ran it would never see the change). Append a line for each new migration.
_SHIPPED = {
    1: "1f54ba4c965a4dc4079fafd4c4f04d787705267d60bbb39a1a23addb06bb96c7",
    2: "961b6848765953d68a923c9ebb9f0f9f3ff60e4bd14b35169086a35cdc67b136",
    3: "e8e083c07c422fe674a8bd20847d0d015d021189fc879d5c52c9a5183a28c355",
    4: "358938d6222a51c79b18b1fe5ae9088b7b8c050162173b218f399875a233ff01",
    5: "4f9295d89ea493b0541b0bc3453f11c70794b6cb04f8b6b88b95bc80380b1e8b",
}


def test_shipped_migrations_never_change() -> None:
    found = {
        version: hashlib.sha256(";\n".join(statements()).encode()).hexdigest()
        for version, statements in schema.MIGRATIONS
    }
    assert found == _SHIPPED


def test_every_earlier_release_migrates_to_the_current_columns_and_views(tmp_path: Path) -> None:
    fresh = duckdb.connect(str(tmp_path / "new.duckdb"))
    migrate(fresh)
    expected = (_columns(fresh), _views(fresh))
    # ... and its views are today's `schema.VIEWS` (as DuckDB spells them back)
    for name, sql in schema.VIEWS.items():
        fresh.execute(f"CREATE VIEW current_{name} AS {sql}")
    current = {
        name.removeprefix("current_"): sql
        for name, sql in _views(fresh).items()
        if name.startswith("current_")
    }
    fresh.close()
    assert current == expected[1]
    for release in range(
        1, len(schema.MIGRATIONS)
    ):  # a file last written by the release with migrations 1..N
        con = duckdb.connect(str(tmp_path / f"release-{release}.duckdb"))
        con.execute("CREATE TABLE schema_migrations (version INTEGER, applied_at TIMESTAMPTZ)")
        for version, statements in schema.MIGRATIONS[:release]:
            for statement in statements():
                con.execute(statement)
            con.execute("INSERT INTO schema_migrations VALUES (?, now())", [version])
        migrate(con)
        assert (_columns(con), _views(con)) == expected, release
        con.close()


def _views(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall()
    return {
        name: " ".join(sql.split()).removeprefix(f"CREATE VIEW {name} AS ").rstrip(";") for name, sql in rows
    }


def test_new_and_migrated_databases_have_identical_columns(tmp_path: Path) -> None:
    fresh = duckdb.connect(str(tmp_path / "new.duckdb"))
    migrate(fresh)
    new_columns = _columns(fresh)
    fresh.close()
    assert new_columns == _declared()

    # A file written by the release before migration 3: migrations 1 and 2 only, with a priced row.
    path = tmp_path / "old.duckdb"
    old = duckdb.connect(str(path))
    old.execute("CREATE TABLE schema_migrations (version INTEGER, applied_at TIMESTAMPTZ)")
    for version, statements in schema.MIGRATIONS[:2]:
        for statement in statements():
            old.execute(statement)
        old.execute("INSERT INTO schema_migrations VALUES (?, now())", [version])
    assert "service_tier" not in [c for c, _ in _columns(old)]
    old.execute(
        "INSERT INTO usage_events (id, call_id, ts_start, ts_end, provider, operation, app, host, pid,"
        " stream, usage_source, tags, blocked, schema_version, cost_usd, priced, ingested_at)"
        " VALUES ('a', 'a', now(), now(), 'openai', 'chat', 'x', 'h', 1, false, 'provider', MAP {},"
        " false, 1, 0.25, true, now()), ('b', 'b', now(), now(), 'openai', 'chat', 'x', 'h', 1, false,"
        " 'provider', MAP {}, false, 1, NULL, false, now())"
    )
    old.close()

    store = Store(path, Pricer())
    try:
        assert store.read(_columns) == new_columns
        rows = store.read(
            lambda cur: cur.execute(
                "SELECT id, cost_usd, computed_cost_usd, cost_source, service_tier FROM usage_events ORDER BY id"
            ).fetchall()
        )
        assert rows == [("a", 0.25, 0.25, "computed", None), ("b", None, None, None, None)]
        event = make_event(service_tier="flex", model="gpt-5", input_tokens=10, output_tokens=1)
        assert store.submit([event]).result(10).accepted == 1
        tier = store.read(
            lambda cur: cur.execute(
                "SELECT service_tier FROM usage_events WHERE id = ?", [event.id]
            ).fetchone()
        )
        assert tier == ("flex",)
        versions = store.read(
            lambda cur: cur.execute("SELECT max(version) FROM schema_migrations").fetchone()
        )
        assert versions == (len(schema.MIGRATIONS),)
    finally:
        store.close()
