"""DuckDB schema: the `usage_events` columns are derived from `UsageEvent`, plus what the daemon adds.

Migrations are an ordered list; `schema_migrations` records which ran.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Literal, get_args, get_origin

from costwatch.events import UsageEvent

# Wire floats (epoch seconds) become timestamps in storage: users query time, not numbers.
_TIMESTAMP_FIELDS = {"ts_start", "ts_end"}

# Columns the daemon adds when it stores an event.
DAEMON_COLUMNS: dict[str, str] = {
    "cost_usd": "DOUBLE",  # NULL when the model is unpriced: never a guess, never $0
    "input_cost_usd": "DOUBLE",
    "output_cost_usd": "DOUBLE",
    "priced": "BOOLEAN NOT NULL",
    "price_source": "VARCHAR",  # genai-prices | override | NULL
    "price_version": "VARCHAR",  # e.g. genai-prices 0.2.3 or override
    "ingested_at": "TIMESTAMPTZ NOT NULL",
}

# Columns added by later migrations, appended to the table in this order (migration 1's
# table is `event_columns() + DAEMON_COLUMNS`; never change that, add here instead).
ADDED_COLUMNS: dict[str, str] = {
    # Calendar day of ts_start in the daemon's `timezone`, stored by the writer (migration 2):
    # `CAST(ts_start AS DATE)` is a per-row ICU time-zone conversion (~390 ms at 10M rows).
    # Nullable: rows written by hand without it are still accepted.
    "day": "DATE",
}


def _duckdb_type(name: str, annotation: object) -> str:
    if name in _TIMESTAMP_FIELDS:
        return "TIMESTAMPTZ"
    if name == "tags":
        return "MAP(VARCHAR, VARCHAR)"
    base = _strip(annotation)
    if base is bool:
        return "BOOLEAN"
    if base is int:
        return "BIGINT"
    if base is float:
        return "DOUBLE"
    return "VARCHAR"


def _strip(annotation: object) -> object:
    """Reduce ``Annotated[int, Meta] | None`` and ``Literal[...]`` to a plain Python type."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _strip(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in get_args(annotation) if a is not type(None)]
        return _strip(non_none[0])
    if origin is Literal:
        return str
    return annotation


def event_columns() -> dict[str, str]:
    """Event field name -> DuckDB type, in `UsageEvent` field order."""
    hints = typing.get_type_hints(UsageEvent, include_extras=True)
    return {name: _duckdb_type(name, hints[name]) for name in UsageEvent.__struct_fields__}


def stored_columns() -> dict[str, str]:
    """Every `usage_events` column -> DuckDB type, in table order (after all migrations)."""
    return {**event_columns(), **DAEMON_COLUMNS, **ADDED_COLUMNS}


def usage_events_ddl() -> str:
    columns = {**event_columns(), **DAEMON_COLUMNS}
    # No PRIMARY KEY: the ART index it builds made the file ~5x larger (4M UUIDv7 ids:
    # 322 MB vs 66 MB) and inserts ~16% slower. The store dedupes instead with an
    # anti-join on the batch's ts_start range (zone maps; ~6 ms per 10k ids at 4M rows).
    columns["id"] = "VARCHAR NOT NULL"
    body = ",\n    ".join(f"{name} {sql_type}" for name, sql_type in columns.items())
    return f"CREATE TABLE usage_events (\n    {body}\n)"


_SPEND_BY_DAY_V1 = """
        SELECT CAST(ts_start AS DATE) AS day, sum(cost_usd) AS cost_usd,
               count(*) AS requests, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens, count(*) FILTER (WHERE NOT priced) AS unpriced_requests
        FROM usage_events GROUP BY 1 ORDER BY 1"""

# The current view definitions (what a fresh database ends up with).
VIEWS: dict[str, str] = {
    "spend_by_day": """
        SELECT day, sum(cost_usd) AS cost_usd,
               count(*) AS requests, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens, count(*) FILTER (WHERE NOT priced) AS unpriced_requests
        FROM usage_events GROUP BY 1 ORDER BY 1""",
    "spend_by_model": """
        SELECT provider, model, sum(cost_usd) AS cost_usd, count(*) AS requests,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cached_input_tokens) AS cached_input_tokens, sum(reasoning_tokens) AS reasoning_tokens,
               count(*) FILTER (WHERE NOT priced) AS unpriced_requests
        FROM usage_events GROUP BY 1, 2 ORDER BY cost_usd DESC NULLS LAST""",
    "spend_by_app": """
        SELECT app, sum(cost_usd) AS cost_usd, count(*) AS requests,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
        FROM usage_events GROUP BY 1 ORDER BY cost_usd DESC NULLS LAST""",
    "spend_by_user": """
        SELECT "user", sum(cost_usd) AS cost_usd, count(*) AS requests,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
        FROM usage_events GROUP BY 1 ORDER BY cost_usd DESC NULLS LAST""",
    "errors_by_class": """
        SELECT provider, model, coalesce(error_class, 'ok') AS error_class, count(*) AS requests
        FROM usage_events GROUP BY 1, 2, 3 ORDER BY requests DESC""",
    "latency_by_model": """
        SELECT provider, model, count(*) AS requests,
               quantile_cont(latency_ms, 0.5) AS p50_ms,
               quantile_cont(latency_ms, 0.95) AS p95_ms,
               quantile_cont(latency_ms, 0.99) AS p99_ms,
               quantile_cont(ttft_ms, 0.5) AS ttft_p50_ms,
               quantile_cont(ttft_ms, 0.95) AS ttft_p95_ms
        FROM usage_events WHERE error_class IS NULL GROUP BY 1, 2 ORDER BY 1, 2""",
}


# The views as migration 1 shipped them (frozen: later migrations replace them).
_VIEWS_V1: dict[str, str] = {**VIEWS, "spend_by_day": _SPEND_BY_DAY_V1}


def _migration_1() -> list[str]:
    statements = [
        usage_events_ddl(),
        """CREATE TABLE killswitches (
            id VARCHAR PRIMARY KEY,
            scope MAP(VARCHAR, VARCHAR) NOT NULL,
            reason VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            engaged_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ,
            lifted_at TIMESTAMPTZ,
            lifted_by VARCHAR
        )""",
        """CREATE TABLE alert_events (
            ts TIMESTAMPTZ NOT NULL,
            rule VARCHAR NOT NULL,
            scope VARCHAR NOT NULL,
            threshold VARCHAR,
            value DOUBLE,
            limit_value DOUBLE,
            state VARCHAR NOT NULL,
            message VARCHAR,
            dry_run BOOLEAN NOT NULL DEFAULT false
        )""",
    ]
    statements += [f"CREATE VIEW {name} AS {sql.strip()}" for name, sql in _VIEWS_V1.items()]
    return statements


def _migration_2() -> list[str]:
    """The stored `day` column, backfilled in the session's TimeZone (the daemon's `timezone`).

    `storage_settings.day_timezone` records the zone the days were computed in, so
    `open_database` can recompute them when the setting changes.
    """
    return [
        "ALTER TABLE usage_events ADD COLUMN day DATE",
        "UPDATE usage_events SET day = CAST(ts_start AS DATE)",
        "CREATE TABLE storage_settings (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        "INSERT INTO storage_settings VALUES ('day_timezone', current_setting('TimeZone'))",
        f"CREATE OR REPLACE VIEW spend_by_day AS {VIEWS['spend_by_day'].strip()}",
    ]


# Append new migrations; never edit one that has shipped.
MIGRATIONS: list[tuple[int, typing.Callable[[], list[str]]]] = [(1, _migration_1), (2, _migration_2)]
