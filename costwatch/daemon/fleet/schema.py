"""The fleet ledger's PostgreSQL schema (all in schema ``costwatch``), created and migrated by daemons.

Migrations are literal DDL, applied in order under a transaction-scoped advisory lock, so
daemons starting together run each one exactly once; `costwatch.schema_migrations` records
them. Append new migrations; never edit one that has shipped.

`usage_events` mirrors the DuckDB table (docs/sql.md) plus ``node`` (which daemon shipped the
row) and ``replicated_at``. It is partitioned by month of ``ts_start``; the primary key is
``(id, ts_start)`` because a partitioned table's unique keys must hold the partition key — a
re-sent event carries the same id *and* ts_start, so it is still one row per event id.
Partitions are created on demand by `ensure_partitions` (retention: drop old ones,
docs/fleet.md).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

__all__ = ["LEDGER_COLUMNS", "MIGRATIONS", "ensure_partitions", "migrate", "partition_name"]

_MIGRATION_LOCK = 0x636F7374_7761_01  # pg_advisory_xact_lock key for migrations
_PARTITION_LOCK = 0x636F7374_7761_02  # ... and for creating partitions

_USAGE_EVENTS_V1 = """CREATE TABLE costwatch.usage_events (
    node text NOT NULL,
    id text NOT NULL,
    call_id text,
    ts_start timestamptz NOT NULL,
    ts_end timestamptz,
    provider text,
    operation text,
    app text,
    host text,
    pid bigint,
    server_address text,
    request_model text,
    response_model text,
    model text,
    stream boolean,
    http_status bigint,
    error_class text,
    input_tokens bigint,
    output_tokens bigint,
    cached_input_tokens bigint,
    cache_write_tokens bigint,
    reasoning_tokens bigint,
    usage_source text,
    latency_ms double precision,
    ttft_ms double precision,
    retry_attempt bigint,
    "user" text,
    tags jsonb,
    trace_id text,
    span_id text,
    blocked boolean,
    block_reason text,
    ratelimit_remaining_requests bigint,
    ratelimit_remaining_tokens bigint,
    ratelimit_limit_requests bigint,
    ratelimit_limit_tokens bigint,
    schema_version bigint,
    cost_usd double precision,
    input_cost_usd double precision,
    output_cost_usd double precision,
    priced boolean NOT NULL,
    price_source text,
    price_version text,
    ingested_at timestamptz NOT NULL,
    day date,
    service_tier text,
    speed text,
    inference_geo text,
    cache_write_5m_tokens bigint,
    cache_write_1h_tokens bigint,
    provider_cost_usd double precision,
    computed_cost_usd double precision,
    cost_source text,
    seq bigint,
    replicated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, ts_start)
) PARTITION BY RANGE (ts_start)"""

# What replication copies (every column but ``replicated_at``), in table order; the local
# DuckDB columns of the same names (``node`` is the daemon's own name).
LEDGER_COLUMNS: tuple[str, ...] = (
    "node", "id", "call_id", "ts_start", "ts_end", "provider", "operation", "app", "host", "pid",
    "server_address", "request_model", "response_model", "model", "stream", "http_status",
    "error_class", "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
    "reasoning_tokens", "usage_source", "latency_ms", "ttft_ms", "retry_attempt", "user", "tags",
    "trace_id", "span_id", "blocked", "block_reason", "ratelimit_remaining_requests",
    "ratelimit_remaining_tokens", "ratelimit_limit_requests", "ratelimit_limit_tokens",
    "schema_version", "cost_usd", "input_cost_usd", "output_cost_usd", "priced", "price_source",
    "price_version", "ingested_at", "day", "service_tier", "speed", "inference_geo",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "provider_cost_usd", "computed_cost_usd",
    "cost_source", "seq",
)  # fmt: skip


def _migration_1() -> list[str]:
    return [
        # One row: the ledger's identity. Daemons key their watermark by it, so pointing a
        # daemon at a different (or re-created) ledger ships its history again.
        """CREATE TABLE costwatch.ledger (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            created_at timestamptz NOT NULL DEFAULT now(),
            singleton boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton)
        )""",
        "INSERT INTO costwatch.ledger DEFAULT VALUES",
        _USAGE_EVENTS_V1,
        "CREATE INDEX usage_events_ts_start ON costwatch.usage_events (ts_start)",
        "CREATE INDEX usage_events_node_seq ON costwatch.usage_events (node, seq)",
        # Each daemon's progress, as it last reported it (the dashboard's replication panel).
        """CREATE TABLE costwatch.nodes (
            node text PRIMARY KEY,
            last_seq bigint NOT NULL DEFAULT 0,
            events bigint NOT NULL DEFAULT 0,
            replicated_at timestamptz,
            seen_at timestamptz NOT NULL DEFAULT now()
        )""",
        # The fleet kill switch: engaged rows are those with lifted_at NULL and not expired.
        """CREATE TABLE costwatch.killswitches (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            scope jsonb NOT NULL DEFAULT '{}',
            reason text NOT NULL,
            source text NOT NULL,
            node text,
            engaged_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            lifted_at timestamptz,
            lifted_by text
        )""",
        "CREATE INDEX killswitches_engaged ON costwatch.killswitches (engaged_at) WHERE lifted_at IS NULL",
    ]


def _migration_2() -> list[str]:
    """Fleet hard budgets: the limit per (budget, group, window), and each daemon's slice of it."""
    return [
        """CREATE TABLE costwatch.budgets (
            budget text NOT NULL,
            grp text NOT NULL,
            window_id text NOT NULL,
            limit_value double precision NOT NULL,
            unit text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (budget, grp, window_id)
        )""",
        # granted: what the daemon may use this window in all; spent: its recorded spend as it last
        # reported it. A slice past expires_at (a dead daemon) shrinks back to its spent.
        """CREATE TABLE costwatch.budget_slices (
            budget text NOT NULL,
            grp text NOT NULL,
            window_id text NOT NULL,
            node text NOT NULL,
            granted double precision NOT NULL DEFAULT 0,
            spent double precision NOT NULL DEFAULT 0,
            expires_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (budget, grp, window_id, node)
        )""",
    ]


MIGRATIONS: list[tuple[int, list[str]]] = [(1, _migration_1()), (2, _migration_2())]


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply the migrations this ledger lacks (one transaction, serialized across daemons)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
        # Looked up first: CREATE … IF NOT EXISTS checks the CREATE privilege even when nothing is created.
        if conn.execute("SELECT to_regnamespace('costwatch')").fetchone() == (None,):
            conn.execute("CREATE SCHEMA costwatch")
        if conn.execute("SELECT to_regclass('costwatch.schema_migrations')").fetchone() == (None,):
            conn.execute(
                "CREATE TABLE costwatch.schema_migrations"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        done = {row[0] for row in conn.execute("SELECT version FROM costwatch.schema_migrations")}
        for version, statements in MIGRATIONS:
            if version in done:
                continue
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]  # literal DDL
            conn.execute("INSERT INTO costwatch.schema_migrations (version) VALUES (%s)", [version])
            applied.append(version)
    return applied


def month_of(ts: dt.datetime) -> dt.date:
    ts = ts.astimezone(dt.timezone.utc)
    return dt.date(ts.year, ts.month, 1)


def _next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(month: dt.date) -> str:
    return f"usage_events_{month.year:04d}_{month.month:02d}"


def ensure_partitions(conn: psycopg.Connection, months: set[dt.date]) -> None:
    """Create the monthly partitions (UTC months) that do not exist yet, in their own transaction.

    Creating a partition locks the parent briefly, so replication calls this only for months
    it has not seen (and the month after the current one ahead of time).
    """
    missing = [
        m
        for m in sorted(months)
        if conn.execute("SELECT to_regclass(%s)", [f"costwatch.{partition_name(m)}"]).fetchone()[0] is None  # type: ignore[index]
    ]
    if not missing:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_PARTITION_LOCK])
        for month in missing:
            # Names and bounds come from dates we build, never from user input.
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS costwatch.{partition_name(month)}"  # type: ignore[arg-type]
                f" PARTITION OF costwatch.usage_events"
                f" FOR VALUES FROM ('{month.isoformat()} 00:00:00+00') TO ('{_next_month(month).isoformat()} 00:00:00+00')"
            )
