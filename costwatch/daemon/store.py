"""DuckDB storage: open + migrate, and the single writer thread that group-commits ingest batches.

DuckDB allows one writing process per file and executemany runs ~2k rows/s, so
one thread owns every write: it merges the batches that queued up while the
previous commit ran, dedupes them by event id, prices them (vectorised, once per
distinct model: `Pricer.price_table`), inserts them as one registered Arrow table
with the calendar `day` computed by DuckDB in the session time zone, commits,
updates metrics, and only then resolves each request's future (a 2xx means
"committed"). Reads use their own cursors.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

from costwatch.daemon import schema
from costwatch.events import UsageEvent
from costwatch.pricing import PRICE_COLUMNS, Pricer

__all__ = ["IngestResult", "Store", "open_database"]

log = logging.getLogger("costwatch.daemon.store")
T = TypeVar("T")

_ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "MAP(VARCHAR, VARCHAR)": pa.map_(pa.string(), pa.string()),
}
EVENT_COLUMNS: dict[str, str] = schema.event_columns()
ALL_COLUMNS: list[str] = list(schema.stored_columns())
# What the writer's Arrow batch holds (inserted by name); `day` is computed by the INSERT itself,
# `seq` comes from its column default (a sequence: commit order, read by fleet replication).
_BATCH_COLUMNS: list[str] = [*EVENT_COLUMNS, *PRICE_COLUMNS, "ingested_at"]
assert sorted([*_BATCH_COLUMNS, "day", "seq"]) == sorted(ALL_COLUMNS)
INSERT_BATCH = (
    f"INSERT INTO usage_events ({', '.join(_BATCH_COLUMNS)}, day)"
    " SELECT *, CAST(ts_start AS DATE) FROM _cw_batch"
)
_MERGE_MAX_EVENTS = 20_000  # a commit takes what queued meanwhile, up to this many events
WAL_AUTOCHECKPOINT = "256MB"
IDLE_CHECKPOINT_S = 2.0  # checkpoint once no ingest has arrived for this long
_LOW_DISK_BYTES = 64 * 1024 * 1024


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
        # The writer checkpoints when ingest pauses (`Store._run`); this bound only keeps a
        # WAL from growing without end under non-stop ingest. At DuckDB's 16 MB default a
        # checkpoint landed inside every few commits: 2/3 of the commit time (benchmarks §2).
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


def _timestamps(values: tuple[float, ...] | list[float]) -> pa.Array:
    seconds = pa.array(values, pa.float64())
    micros = pc.round(pc.multiply(seconds, 1_000_000.0)).cast(pa.int64())
    return micros.cast(_ARROW_TYPES["TIMESTAMPTZ"])


def events_table(events: list[UsageEvent]) -> pa.Table:
    """The event columns as an Arrow table, in `usage_events` column order.

    ``astuple`` + ``zip(*rows)`` transposes in C: ~3x faster than a getattr per cell.
    """
    columns = list(zip(*(astuple(e) for e in events), strict=True)) if events else [() for _ in EVENT_COLUMNS]
    arrays: list[pa.Array] = []
    for sql_type, values in zip(EVENT_COLUMNS.values(), columns, strict=True):
        if sql_type == "TIMESTAMPTZ":
            arrays.append(_timestamps(values))
        else:  # dicts convert to MAP directly
            arrays.append(pa.array(values, _ARROW_TYPES[sql_type]))
    return pa.Table.from_arrays(arrays, names=list(EVENT_COLUMNS))


def batch_table(events: list[UsageEvent], pricer: Pricer, ingested_at: float) -> pa.Table:
    """What the writer inserts: the event columns, their prices and ``ingested_at``."""
    table = events_table(events)
    for name, column in pricer.price_table(table).items():
        table = table.append_column(name, column)
    return table.append_column("ingested_at", _timestamps([ingested_at] * len(events)))


@dataclass
class IngestResult:
    accepted: int
    duplicates: int


@dataclass
class _IngestJob:
    events: list[UsageEvent]
    future: concurrent.futures.Future[IngestResult] = field(default_factory=concurrent.futures.Future)


@dataclass
class _CallJob:
    fn: Callable[[duckdb.DuckDBPyConnection], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


_STOP = object()
# (committed events, their cost_usd — None where unpriced —, seconds the commit took)
CommitHook = Callable[[list[UsageEvent], list["float | None"], float], None]


class Store:
    """Owns the DuckDB connection; every write goes through its writer thread."""

    def __init__(
        self,
        path: Path,
        pricer: Pricer,
        *,
        memory_limit: str = "1GB",
        threads: int = 2,
        timezone: str = "UTC",
        wal_autocheckpoint: str = WAL_AUTOCHECKPOINT,
        on_commit: CommitHook | None = None,
    ) -> None:
        self.path = path
        self.pricer = pricer
        self.on_commit = on_commit
        self.con = open_database(
            path,
            memory_limit=memory_limit,
            threads=threads,
            timezone=timezone,
            wal_autocheckpoint=wal_autocheckpoint,
        )
        self.last_error: str | None = None
        self.last_commit_at: float | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self.pending_events = 0  # queued but not yet committed (read by the app for backpressure)
        self._uncheckpointed = 0  # rows committed since the last idle checkpoint (writer thread)
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="costwatch-writer", daemon=True)
        self._thread.start()

    # -- public API -----------------------------------------------------------------
    def submit(self, events: list[UsageEvent]) -> concurrent.futures.Future[IngestResult]:
        """Queue events for the next group commit; the future resolves after COMMIT."""
        job = _IngestJob(events)
        if self._closed:
            job.future.set_exception(RuntimeError("the store is closed"))
        else:
            with self._pending_lock:
                self.pending_events += len(events)
            self._queue.put(job)
        return job.future

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float | None = 60) -> T:
        """Run ``fn(cursor)`` on the writer thread inside one transaction; returns its result."""
        job = _CallJob(fn)
        if self._closed:
            raise RuntimeError("the store is closed")
        self._queue.put(job)
        return job.future.result(timeout)

    def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn`` on a fresh cursor (any thread); MVCC keeps it off the writer's way."""
        cur = self.con.cursor()
        try:
            return fn(cur)
        finally:
            cur.close()

    def health(self) -> list[str]:
        """Reasons the store is degraded; empty when healthy."""
        reasons = []
        if not self._thread.is_alive():
            reasons.append("writer thread is not running")
        if self.last_error:
            reasons.append(f"last commit failed: {self.last_error}")
        directory = self.path.parent
        if not os.access(directory, os.W_OK):
            reasons.append(f"database directory {directory} is not writable")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            reasons.append(f"database file {self.path} is not writable")
        try:
            if shutil.disk_usage(directory).free < _LOW_DISK_BYTES:
                reasons.append(f"disk almost full under {directory}")
        except OSError as exc:
            reasons.append(f"cannot stat {directory}: {exc}")
        return reasons

    def close(self) -> None:
        """Drain queued work, checkpoint and close (called on SIGTERM/SIGINT)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.warning("checkpoint on close failed: %s", exc)
        self.con.close()

    # -- writer thread --------------------------------------------------------------
    def _run(self) -> None:
        cur = self.con.cursor()
        pending: Any = None
        while True:
            if pending is not None:
                job, pending = pending, None
            else:
                try:
                    job = self._queue.get(timeout=IDLE_CHECKPOINT_S if self._uncheckpointed else None)
                except queue.Empty:
                    self._checkpoint(cur)
                    continue
            if job is _STOP:
                break
            try:
                if isinstance(job, _CallJob):
                    if job.future.set_running_or_notify_cancel():
                        self._run_call(cur, job)
                    continue
                jobs = [job]
                count = len(job.events)
                while count < _MERGE_MAX_EVENTS:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, _IngestJob):
                        pending = nxt
                        break
                    jobs.append(nxt)
                    count += len(nxt.events)
                self._commit(cur, jobs)
            except Exception:  # the writer must outlive any one job
                log.exception("writer job failed")
        cur.close()

    def _checkpoint(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Fold the WAL into the file while nothing waits on the writer."""
        try:
            cur.execute("CHECKPOINT")
        except duckdb.Error as exc:  # a read still open, a full disk: the WAL keeps every commit
            log.info("idle checkpoint skipped: %s", exc)
        self._uncheckpointed = 0

    def _run_call(self, cur: duckdb.DuckDBPyConnection, job: _CallJob) -> None:
        try:
            cur.execute("BEGIN")
            result = job.fn(cur)
            cur.execute("COMMIT")
        except BaseException as exc:
            _rollback(cur)
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _commit(self, cur: duckdb.DuckDBPyConnection, jobs: list[_IngestJob]) -> None:
        try:
            self._commit_jobs(cur, jobs)
        finally:
            with self._pending_lock:
                self.pending_events -= sum(len(job.events) for job in jobs)

    def _commit_jobs(self, cur: duckdb.DuckDBPyConnection, jobs: list[_IngestJob]) -> None:
        # A request cancelled while queued is dropped (it was never acknowledged); once
        # running, a future can no longer be cancelled, so resolving it below cannot fail.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        started = time.perf_counter()
        try:
            existing = _existing_ids(cur, [e for job in jobs for e in job.events])
            fresh: list[UsageEvent] = []
            results: list[IngestResult] = []
            seen: set[str] = set()
            for job in jobs:
                accepted = duplicates = 0
                for event in job.events:
                    if event.id in existing or event.id in seen:
                        duplicates += 1
                    else:
                        seen.add(event.id)
                        fresh.append(event)
                        accepted += 1
                results.append(IngestResult(accepted, duplicates))
            costs: list[float | None] = []
            if fresh:
                table = batch_table(fresh, self.pricer, time.time())
                costs = table["cost_usd"].to_pylist()
                cur.execute("BEGIN")
                cur.register("_cw_batch", table)
                try:
                    cur.execute(INSERT_BATCH)
                finally:
                    _unregister(cur, "_cw_batch")
                cur.execute("COMMIT")
        except Exception as exc:
            _rollback(cur)
            _unregister(cur, "_cw_batch")
            self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("commit failed: %s", self.last_error)
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.last_error = None
        self.last_commit_at = time.time()
        self._uncheckpointed += len(fresh)
        if self.on_commit is not None:
            try:
                self.on_commit(fresh, costs, time.perf_counter() - started)
            except Exception:  # metrics must never fail an ingest that is committed
                log.exception("updating metrics failed")
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)


def _unregister(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow view without masking the error that aborted the transaction."""
    try:
        cur.unregister(name)
    except duckdb.Error:
        pass


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.execute("ROLLBACK")
    except duckdb.Error:
        pass


def _existing_ids(cur: duckdb.DuckDBPyConnection, events: list[UsageEvent]) -> set[str]:
    """Ids of these events already stored, whatever the stored copy's ``ts_start``.

    There is no primary key (docs/architecture.md), so the lookup must prune by
    itself: it filters on the ``id`` column's own range. UUIDv7 ids start with
    their creation time and the writer stores them roughly in that order, so the
    zone maps of ``id`` skip every row group outside the batch's ids; ids are
    grouped into clusters of nearby creation times (a replayed spool next to live
    traffic is two small ranges, not one wide one). Ids of any other form are
    looked up in one range from their minimum to their maximum: correct, only
    less pruned (random ids scan the whole ``id`` column).
    """
    if not events:
        return set()
    ids = sorted({e.id for e in events})
    table = pa.table({"id": pa.array(ids, pa.string())})
    ranges = id_ranges(ids)
    selects = " UNION ALL ".join(
        "SELECT u.id FROM usage_events u WHERE u.id BETWEEN ? AND ? AND u.id IN (SELECT id FROM _cw_ids)"
        for _ in ranges
    )
    cur.register("_cw_ids", table)
    try:
        rows = cur.execute(selects, [bound for r in ranges for bound in r]).fetchall()
    finally:
        _unregister(cur, "_cw_ids")
    return {row[0] for row in rows}


_CLUSTER_GAP = 10  # in units of 2**16 ms (~65 s, the first 8 hex digits): ~11 min apart → new range
_MAX_RANGES = 8


def id_ranges(ids: list[str]) -> list[tuple[str, str]]:
    """(low, high) id ranges covering ``ids`` (sorted): clusters of UUIDv7 times, one range for the rest.

    Cheap on 10k ids (~1 µs each): a UUIDv7's creation time is read from its first 8 hex
    digits, and only where they change.
    """
    v7: list[str] = []
    other: list[str] = []
    gaps: list[tuple[int, int]] = []  # (gap, index in v7 of the id that starts a new range)
    prefix, prev = "", -1
    for i in ids:
        if len(i) != 36 or i[14] != "7" or i[8] != "-":
            other.append(i)
            continue
        if i[:8] != prefix:
            try:
                t = int(i[:8], 16)
            except ValueError:
                other.append(i)
                continue
            if prev >= 0 and t - prev > _CLUSTER_GAP:
                gaps.append((t - prev, len(v7)))
            prefix, prev = i[:8], t
        v7.append(i)
    ranges: list[tuple[str, str]] = []
    if v7:
        cuts = sorted(n for _, n in sorted(gaps, reverse=True)[: _MAX_RANGES - 1])
        ranges += [(v7[a], v7[b - 1]) for a, b in itertools.pairwise([0, *cuts, len(v7)])]
    if other:
        ranges.append((other[0], other[-1]))
    return ranges


# -- canned queries (status, reprice, export) -------------------------------------------
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
