"""DuckDB schema: the `usage_events` columns follow `UsageEvent`, plus what the daemon adds.

Migration 1 created the table as written out in `_USAGE_EVENTS_V1`; a field added to the event
since then is a column of `ADDED_COLUMNS`, added by a later migration with literal DDL.

Migrations are an ordered list; `schema_migrations` records which ran.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, get_args, get_origin

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

# An unpriced event: usage with tokens that could not be priced, so its cost is NULL (never a guessed
# $0). Calls without usage (`usage_source = 'missing'`) are not among them: no price would give them
# a cost, they are counted apart. `costwatch status`, the spend page, `data_quality` rules and
# /metrics all count with this definition (the SQL and `unpriced_mask`, its Arrow twin).
UNPRICED_SQL = (
    "cost_usd IS NULL AND usage_source <> 'missing'"
    " AND coalesce(input_tokens, 0) + coalesce(output_tokens, 0) > 0"
)


def unpriced_mask(table: Any) -> Any:
    """`UNPRICED_SQL` over an Arrow table of stored rows (the writer's batch, for /metrics)."""
    import pyarrow.compute as pc

    tokens = pc.add(pc.fill_null(table["input_tokens"], 0), pc.fill_null(table["output_tokens"], 0))
    return pc.and_(
        pc.and_(pc.is_null(table["cost_usd"]), pc.not_equal(table["usage_source"], "missing")),
        pc.greater(tokens, 0),
    )


# Columns added by later migrations, appended to the table in this order (migration 1's
# table is `event_columns() + DAEMON_COLUMNS`; never change that, add here instead).
ADDED_COLUMNS: dict[str, str] = {
    # Calendar day of ts_start in the daemon's `timezone`, stored by the writer (migration 2):
    # `CAST(ts_start AS DATE)` is a per-row ICU time-zone conversion (~390 ms at 10M rows).
    # Nullable: rows written by hand without it are still accepted.
    "day": "DATE",
    # Migration 3 (what the invoice prices): event fields added to `UsageEvent` ...
    "service_tier": "VARCHAR",
    "speed": "VARCHAR",
    "inference_geo": "VARCHAR",
    "cache_write_5m_tokens": "BIGINT",
    "cache_write_1h_tokens": "BIGINT",
    "provider_cost_usd": "DOUBLE",
    # ... and what the writer adds: the cost costwatch computed (kept beside a provider-reported
    # `cost_usd`), and where `cost_usd` came from (`provider` | `computed` | NULL: unpriced).
    "computed_cost_usd": "DOUBLE",
    "cost_source": "VARCHAR",
    # Migration 4: commit order, from a sequence (the writer is the only writer, so a larger
    # seq is never visible before a smaller one). Fleet replication resumes after a seq.
    "seq": "BIGINT",
}

# The event fields migration 1 created, in its column order. Later event fields are columns of
# ADDED_COLUMNS (a new database runs every migration, so both end up with the same columns).
V1_EVENT_FIELDS: tuple[str, ...] = (
    "id", "call_id", "ts_start", "ts_end", "provider", "operation", "app", "host", "pid",
    "server_address", "request_model", "response_model", "model", "stream", "http_status",
    "error_class", "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
    "reasoning_tokens", "usage_source", "latency_ms", "ttft_ms", "retry_attempt", "user", "tags",
    "trace_id", "span_id", "blocked", "block_reason", "ratelimit_remaining_requests",
    "ratelimit_remaining_tokens", "ratelimit_limit_requests", "ratelimit_limit_tokens",
    "schema_version",
)  # fmt: skip


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
    events = event_columns()
    return {**{name: events[name] for name in V1_EVENT_FIELDS}, **DAEMON_COLUMNS, **ADDED_COLUMNS}


# Migration 1's table, written out rather than generated from `UsageEvent`: a field added to the
# event must not change what migration 1 creates (it would clash with the migration that adds it).
# No PRIMARY KEY: the ART index it builds makes the file several times larger and inserts slower.
# The store dedupes instead with an anti-join on the batch's id ranges (zone maps on time-ordered
# UUIDv7 ids; batch.id_ranges).
_USAGE_EVENTS_V1 = """CREATE TABLE usage_events (
    id VARCHAR NOT NULL,
    call_id VARCHAR,
    ts_start TIMESTAMPTZ,
    ts_end TIMESTAMPTZ,
    provider VARCHAR,
    operation VARCHAR,
    app VARCHAR,
    host VARCHAR,
    pid BIGINT,
    server_address VARCHAR,
    request_model VARCHAR,
    response_model VARCHAR,
    model VARCHAR,
    stream BOOLEAN,
    http_status BIGINT,
    error_class VARCHAR,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cached_input_tokens BIGINT,
    cache_write_tokens BIGINT,
    reasoning_tokens BIGINT,
    usage_source VARCHAR,
    latency_ms DOUBLE,
    ttft_ms DOUBLE,
    retry_attempt BIGINT,
    user VARCHAR,
    tags MAP(VARCHAR, VARCHAR),
    trace_id VARCHAR,
    span_id VARCHAR,
    blocked BOOLEAN,
    block_reason VARCHAR,
    ratelimit_remaining_requests BIGINT,
    ratelimit_remaining_tokens BIGINT,
    ratelimit_limit_requests BIGINT,
    ratelimit_limit_tokens BIGINT,
    schema_version BIGINT,
    cost_usd DOUBLE,
    input_cost_usd DOUBLE,
    output_cost_usd DOUBLE,
    priced BOOLEAN NOT NULL,
    price_source VARCHAR,
    price_version VARCHAR,
    ingested_at TIMESTAMPTZ NOT NULL
)"""


# The views as migrations 1 and 2 shipped them, written out: later migrations replace them.
_VIEWS_V1: dict[str, str] = {
    "spend_by_day": """
        SELECT CAST(ts_start AS DATE) AS day, sum(cost_usd) AS cost_usd,
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

_SPEND_BY_DAY_V2 = """
        SELECT day, sum(cost_usd) AS cost_usd,
               count(*) AS requests, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens, count(*) FILTER (WHERE NOT priced) AS unpriced_requests
        FROM usage_events GROUP BY 1 ORDER BY 1"""


# Migration 5's views: `unpriced_requests` counts `UNPRICED_SQL`, as status, the spend page, rules
# and /metrics do.
_VIEWS_V5: dict[str, str] = {
    "spend_by_day": f"""
        SELECT day, sum(cost_usd) AS cost_usd,
               count(*) AS requests, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens, count(*) FILTER (WHERE {UNPRICED_SQL}) AS unpriced_requests
        FROM usage_events GROUP BY 1 ORDER BY 1""",
    "spend_by_model": f"""
        SELECT provider, model, sum(cost_usd) AS cost_usd, count(*) AS requests,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cached_input_tokens) AS cached_input_tokens, sum(reasoning_tokens) AS reasoning_tokens,
               count(*) FILTER (WHERE {UNPRICED_SQL}) AS unpriced_requests
        FROM usage_events GROUP BY 1, 2 ORDER BY cost_usd DESC NULLS LAST""",
}

# The current view definitions: what a fresh database ends up with.
VIEWS: dict[str, str] = {**_VIEWS_V1, **_VIEWS_V5}


def _migration_1() -> list[str]:
    statements = [
        _USAGE_EVENTS_V1,
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
        f"CREATE OR REPLACE VIEW spend_by_day AS {_SPEND_BY_DAY_V2.strip()}",
    ]


def _migration_3() -> list[str]:
    """Service tier, speed, geography, cache writes by duration, provider-reported cost (issue 21).

    Rows stored before have no tier and no provider cost: their `cost_usd` was computed, so it
    is copied to `computed_cost_usd` and `cost_source` says so.
    """
    return [
        "ALTER TABLE usage_events ADD COLUMN service_tier VARCHAR",
        "ALTER TABLE usage_events ADD COLUMN speed VARCHAR",
        "ALTER TABLE usage_events ADD COLUMN inference_geo VARCHAR",
        "ALTER TABLE usage_events ADD COLUMN cache_write_5m_tokens BIGINT",
        "ALTER TABLE usage_events ADD COLUMN cache_write_1h_tokens BIGINT",
        "ALTER TABLE usage_events ADD COLUMN provider_cost_usd DOUBLE",
        "ALTER TABLE usage_events ADD COLUMN computed_cost_usd DOUBLE",
        "ALTER TABLE usage_events ADD COLUMN cost_source VARCHAR",
        "UPDATE usage_events SET computed_cost_usd = cost_usd,"
        " cost_source = CASE WHEN cost_usd IS NOT NULL THEN 'computed' END",
    ]


def _migration_4() -> list[str]:
    """Fleet replication (issue 17): `seq` numbers rows in commit order; watermarks per ledger.

    Existing rows get numbers too (in table order), so a database that turns fleet mode on
    later ships its whole history first. `fleet_watermarks.ledger` is the Postgres ledger's
    id (`costwatch.ledger` there): pointing the daemon at another ledger starts from 0.
    """
    return [
        "CREATE SEQUENCE usage_events_seq",
        "ALTER TABLE usage_events ADD COLUMN seq BIGINT DEFAULT nextval('usage_events_seq')",
        """CREATE TABLE fleet_watermarks (
            ledger VARCHAR PRIMARY KEY,
            seq BIGINT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        )""",
    ]


def _migration_5() -> list[str]:
    """`unpriced_requests` in the spend views counts `UNPRICED_SQL` (it counted ``NOT priced``,
    which includes calls without usage, while status, the spend page, rules and /metrics did not).
    """
    return [f"CREATE OR REPLACE VIEW {name} AS {sql.strip()}" for name, sql in _VIEWS_V5.items()]


# Append new migrations; never edit one that has shipped (tests/daemon/test_migrations.py holds
# each shipped migration's statements to a hash).
MIGRATIONS: list[tuple[int, typing.Callable[[], list[str]]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (5, _migration_5),
]
