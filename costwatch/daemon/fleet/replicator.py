"""Ledger replication: committed DuckDB rows, in commit order, into the fleet's Postgres table.

One thread. Each round reads up to ``fleet_batch_events`` rows with ``seq`` above the
watermark (`usage_events.seq` numbers rows in commit order; the store's single writer makes
a larger seq never visible before a smaller one) as Arrow, COPYs them as CSV (written by
Arrow: no Python object per value) into a temporary staging table
and moves them with ``INSERT … ON CONFLICT DO NOTHING`` in the same transaction, then
records the new watermark in DuckDB (`fleet_watermarks`, through the writer thread).

A crash between the Postgres commit and the watermark write re-sends that batch on restart;
the conflict clause drops the copies, so nothing is lost and nothing is counted twice.
While Postgres is down or slow, only this thread waits: ingest, SQL and the spend page read
DuckDB as always, and the backlog (the lag) is shipped once Postgres answers again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from costwatch.daemon.fleet.schema import LEDGER_COLUMNS, ensure_partitions, month_of

if TYPE_CHECKING:
    import duckdb
    from psycopg_pool import ConnectionPool

    from costwatch.daemon.store import Store

__all__ = ["ReplicationStatus", "Replicator"]

log = logging.getLogger("costwatch.daemon.fleet.replicator")

_LOCAL = [c for c in LEDGER_COLUMNS if c != "node"]
# The batch as Arrow, in ledger column order: the node first, tags as JSON text (jsonb in Postgres).
_SELECT = (
    "SELECT ? AS node, "
    + ", ".join("to_json(tags) AS tags" if c == "tags" else '"user"' if c == "user" else c for c in _LOCAL)
    + " FROM usage_events WHERE seq > ? ORDER BY seq LIMIT ?"
)
_QUOTED = ", ".join('"user"' if c == "user" else c for c in LEDGER_COLUMNS)
_CSV = pacsv.WriteOptions(include_header=False)  # NULL unquoted-empty, '' quoted: Postgres CSV semantics
_STAGE = "CREATE TEMP TABLE IF NOT EXISTS cw_stage (LIKE costwatch.usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
_MOVE = (
    f"INSERT INTO costwatch.usage_events ({_QUOTED}) SELECT {_QUOTED} FROM cw_stage ON CONFLICT DO NOTHING"
)
_NODE = (
    "INSERT INTO costwatch.nodes (node, last_seq, events, replicated_at, seen_at) VALUES (%s, %s, %s, now(), now())"
    " ON CONFLICT (node) DO UPDATE SET last_seq = greatest(nodes.last_seq, excluded.last_seq),"
    " events = nodes.events + excluded.events, replicated_at = now(), seen_at = now()"
)


def _months(first: dt.date, last: dt.date) -> set[dt.date]:
    out = set()
    month = first
    while month <= last:
        out.add(month)
        month = dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return out


@dataclass
class ReplicationStatus:
    """What `costwatch status`, the spend page and /metrics show."""

    connected: bool = False
    watermark: int = 0  # last seq the ledger acknowledged
    lag_events: int = 0  # committed here, not yet in the ledger
    lag_seconds: float = 0.0  # age (by ingested_at) of the oldest of them
    shipped_events: int = 0  # rows sent by this process (re-sent copies included)
    inserted_events: int = 0  # rows the ledger did not have yet
    batches: int = 0
    errors: int = 0
    last_error: str | None = None
    last_shipped_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "watermark": self.watermark,
            "lag_events": self.lag_events,
            "lag_seconds": round(self.lag_seconds, 3),
            "replicated_events": self.inserted_events,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_shipped_at": self.last_shipped_at,
        }


class Replicator:
    """The replication thread; `start()`/`shutdown()` like every daemon service."""

    def __init__(
        self,
        store: Store,
        pool: ConnectionPool,
        bootstrap: Callable[[], str],
        node: str,
        *,
        batch_events: int = 5_000,
        interval_s: float = 0.5,
        connect_timeout_s: float = 3.0,
    ) -> None:
        self.store = store
        self.pool = pool
        self._bootstrap = bootstrap  # migrates the ledger once, returns its id
        self.ledger_id: str | None = None
        self.node = node
        self.batch_events = batch_events
        self.interval_s = interval_s
        self.connect_timeout_s = connect_timeout_s
        self.status = ReplicationStatus()
        self._months: set[dt.date] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- watermark ----------------------------------------------------------------------
    def load_watermark(self, ledger: str | None) -> int:
        """The ledger's watermark; without a ledger id yet (Postgres down at start), the latest
        one recorded, so the lag shown meanwhile is the real backlog."""
        if ledger is None:
            sql, params = "SELECT seq FROM fleet_watermarks ORDER BY updated_at DESC LIMIT 1", []
        else:
            sql, params = "SELECT seq FROM fleet_watermarks WHERE ledger = ?", [ledger]
        row = self.store.read(lambda cur: cur.execute(sql, params).fetchone())
        return int(row[0]) if row else 0

    def _save_watermark(self, seq: int) -> None:
        def write(cur: duckdb.DuckDBPyConnection) -> None:
            cur.execute("INSERT OR REPLACE INTO fleet_watermarks VALUES (?, ?, now())", [self.ledger_id, seq])

        self.store.call(write)

    # -- the loop -----------------------------------------------------------------------
    def start(self) -> None:
        self.status.watermark = self.load_watermark(None)
        self._thread = threading.Thread(target=self._run, name="costwatch-fleet-replicator", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def kick(self) -> None:
        """Ship now instead of after the pause (tests, benchmarks)."""
        self._wake.set()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                shipped = self.ship_once()
                backoff = 0.5
            except Exception as exc:  # Postgres down, slow, restarted: retry; DuckDB keeps the rows
                self._failed(exc)
                self._wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if shipped < self.batch_events:  # caught up: pause; a full batch goes again at once
                self._wait(self.interval_s)

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _failed(self, exc: BaseException) -> None:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.status.last_error != line:
            log.warning("fleet replication paused: %s (retrying; DuckDB keeps every event)", line)
        self.status.connected = False
        self.status.errors += 1
        self.status.last_error = line

    def ship_once(self) -> int:
        """Ship one batch after the watermark; returns how many rows it held."""
        if self.ledger_id is None:
            self.ledger_id = self._bootstrap()
            self.status.watermark = self.load_watermark(self.ledger_id)
        wm = self.status.watermark
        table = self.store.read(
            lambda cur: cur.sql(_SELECT, params=[self.node, wm, self.batch_events]).to_arrow_table()
        )
        if table.num_rows == 0:
            if not self.status.connected:  # nothing to ship: still say whether the ledger answers
                with self.pool.connection(timeout=self.connect_timeout_s) as conn:
                    conn.execute("SELECT 1")
                self.status.connected = True
                self.status.last_error = None
            return 0
        lo, hi = pc.min_max(table["ts_start"]).values()
        months = _months(month_of(lo.as_py()), month_of(hi.as_py()))
        last = int(table["seq"][-1].as_py())
        inserted = self._copy(table, last, months)
        self._save_watermark(last)
        st = self.status
        st.watermark = last
        st.connected = True
        st.last_error = None
        st.shipped_events += table.num_rows
        st.inserted_events += inserted
        st.batches += 1
        st.last_shipped_at = time.time()
        return table.num_rows

    def _copy(self, table: pa.Table, last: int, months: set[dt.date]) -> int:
        """COPY the batch (as CSV, written by Arrow) into the staging table; move the new rows."""
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, _CSV)
        data = sink.getvalue()
        with self.pool.connection(timeout=self.connect_timeout_s) as conn:
            new_months = months - self._months
            if new_months:
                # The month after the newest one too, so month ends do not create partitions under load.
                ahead = {dt.date(m.year + m.month // 12, m.month % 12 + 1, 1) for m in new_months}
                ensure_partitions(conn, new_months | ahead)
                self._months |= new_months | ahead
            with conn.transaction():
                # A ledger that stalls gives up the batch (and the connection) instead of holding forever.
                conn.execute("SELECT set_config('statement_timeout', '60s', true)")
                conn.execute(_STAGE)
                with conn.cursor() as cur:
                    with cur.copy(f"COPY cw_stage ({_QUOTED}) FROM STDIN (FORMAT csv)") as copy:
                        copy.write(memoryview(data))
                    cur.execute(_MOVE)
                    inserted = cur.rowcount
                    cur.execute(_NODE, [self.node, last, inserted])
        return max(inserted, 0)

    def measure_lag(self) -> ReplicationStatus:
        """Read the backlog now (status, /metrics): also right while a batch is stuck in flight."""
        wm = self.status.watermark
        count, oldest = self.store.read(
            lambda cur: cur.execute(
                "SELECT count(*), epoch(min(ingested_at)) FROM usage_events WHERE seq > ?", [wm]
            ).fetchone()
        )
        self.status.lag_events = int(count)
        self.status.lag_seconds = max(0.0, time.time() - float(oldest)) if oldest is not None else 0.0
        return self.status
