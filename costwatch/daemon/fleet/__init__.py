"""Fleet mode on PostgreSQL (``fleet_dsn``): one ledger, one kill switch across every daemon.

Imported only when a DSN is configured (`costwatch.daemon.server.build_daemon`), so a daemon
without one never loads psycopg. `FleetService` is a daemon service (``start``/``shutdown``)
owning one connection pool and the parts, one module each:

- `schema`: the ledger's tables, created and migrated by whichever daemon starts first;
- `replicator`: committed DuckDB rows → ``costwatch.usage_events`` (COPY, idempotent);
- `killswitch`: the fleet kill switch (NOTIFY + polling) mirrored into the local registry;
- `budgets`: fleet hard budgets, slices leased in atomic transactions (the lease seam);
- `sql`: read-only queries on the ledger.

`start()` gives Postgres ``fleet_connect_timeout_s`` to answer: when it does, the schema is
migrated and the fleet's kill switches are engaged locally *before* the daemon serves; when
it does not, the daemon serves anyway on what it knew (the local DuckDB keeps the fleet
switches it last saw) and the threads keep retrying.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool

from costwatch.daemon.fleet import schema
from costwatch.daemon.fleet.budgets import FleetBudgets
from costwatch.daemon.fleet.killswitch import FleetKillSwitch
from costwatch.daemon.fleet.replicator import Replicator
from costwatch.daemon.fleet.sql import run_fleet_query

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from costwatch.daemon.killswitch import KillSwitchRegistry
    from costwatch.daemon.sql import QueryResult
    from costwatch.daemon.store import Store
    from costwatch.settings import DaemonSettings

__all__ = ["FleetService"]

log = logging.getLogger("costwatch.daemon.fleet")


class FleetService:
    """Everything fleet mode runs in one daemon."""

    def __init__(
        self,
        settings: DaemonSettings,
        store: Store,
        killswitches: KillSwitchRegistry,
        metrics: CollectorRegistry,
    ) -> None:
        assert settings.fleet_dsn
        self.node: str = settings.node
        self.dsn: str = settings.fleet_dsn
        self.connect_timeout_s: float = settings.fleet_connect_timeout_s
        self.connect_kwargs: dict[str, Any] = {"application_name": f"costwatch {self.node}"[:63]}
        kwargs = {
            "autocommit": True,
            "connect_timeout": max(1, round(self.connect_timeout_s)),
            **self.connect_kwargs,
        }
        # min_size=0: no background reconnect storm while Postgres is down; connections are made
        # when used and kept (max_idle) while they are.
        self.pool = ConnectionPool(
            self.dsn, min_size=0, max_size=4, open=False, kwargs=kwargs, check=ConnectionPool.check_connection
        )
        self.sql_pool = (
            ConnectionPool(
                settings.fleet_sql_dsn,
                min_size=0,
                max_size=2,
                open=False,
                kwargs=kwargs,
                check=ConnectionPool.check_connection,
            )
            if settings.fleet_sql_dsn
            else self.pool
        )
        self.ledger_id: str | None = None
        self.replicator = Replicator(
            store,
            self.pool,
            self._bootstrap,
            self.node,
            batch_events=settings.fleet_batch_events,
            interval_s=settings.fleet_interval_s,
            connect_timeout_s=self.connect_timeout_s,
        )
        self.killswitch = FleetKillSwitch(
            self.pool,
            self.dsn,
            self.connect_kwargs,
            killswitches,
            self.node,
            poll_s=settings.fleet_poll_s,
            connect_timeout_s=self.connect_timeout_s,
        )
        self.budgets = FleetBudgets(
            self.pool, self.node, ttl_s=settings.fleet_slice_ttl_s, connect_timeout_s=self.connect_timeout_s
        )
        self._bootstrap_lock = threading.Lock()
        metrics.register(_FleetMetrics(self))

    def _bootstrap(self) -> str:
        """Migrate the ledger (once) and return its id."""
        with self._bootstrap_lock:
            if self.ledger_id is None:
                with self.pool.connection(timeout=self.connect_timeout_s) as conn:
                    applied = schema.migrate(conn)
                    if applied:
                        log.info("fleet ledger: applied migrations %s", applied)
                    row = conn.execute("SELECT id::text FROM costwatch.ledger").fetchone()
                    assert row is not None
                    self.ledger_id = row[0]
            return self.ledger_id

    def start(self) -> None:
        self.pool.open(wait=False)
        if self.sql_pool is not self.pool:
            self.sql_pool.open(wait=False)
        try:
            self._bootstrap()
            self.killswitch.sync()  # engaged fleet switches hold before the first request is served
        except Exception as exc:
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning(
                "fleet ledger not reachable at start (%s): serving on the local state; retrying in the background",
                line,
            )
        self.replicator.start()
        self.killswitch.start()
        self.budgets.start()

    def shutdown(self) -> None:
        self.budgets.shutdown()
        self.killswitch.shutdown()
        self.replicator.shutdown()
        if self.sql_pool is not self.pool:
            self.sql_pool.close(timeout=2)
        self.pool.close(timeout=2)

    # -- what the API calls -----------------------------------------------------------------
    def query(self, sql: str, *, timeout_s: float, max_rows: int) -> QueryResult:
        return run_fleet_query(
            self.sql_pool,
            sql,
            timeout_s=timeout_s,
            max_rows=max_rows,
            connect_timeout_s=self.connect_timeout_s,
        )

    def status(self) -> dict[str, Any]:
        ks = self.killswitch
        return {
            "node": self.node,
            "ledger": self.ledger_id,
            "replication": self.replicator.measure_lag().as_dict(),
            "killswitch": {
                "listening": ks.listening,
                "last_sync_at": ks.last_sync_at,
                "last_error": ks.last_error,
            },
            "budgets": {**self.budgets.counters, "last_error": self.budgets.last_error},
        }


class _FleetMetrics(Collector):
    """Replication and kill-switch health at scrape time (`costwatch_fleet_*`)."""

    def __init__(self, service: FleetService) -> None:
        self._service = service

    def collect(self) -> Iterable[Any]:
        st = self._service.replicator.measure_lag()
        ks = self._service.killswitch
        gauges = [
            (
                "costwatch_fleet_replication_lag_events",
                "Events committed here and not yet in the fleet ledger.",
                st.lag_events,
            ),
            (
                "costwatch_fleet_replication_lag_seconds",
                "Age (by ingested_at) of the oldest event not yet in the fleet ledger; 0 when caught up.",
                st.lag_seconds,
            ),
            (
                "costwatch_fleet_ledger_connected",
                "1 while the last replication round reached Postgres.",
                float(st.connected),
            ),
            (
                "costwatch_fleet_killswitch_listening",
                "1 while LISTEN on the fleet kill-switch channel is open.",
                float(ks.listening),
            ),
            (
                "costwatch_fleet_killswitch_sync_age_seconds",
                "Seconds since the fleet kill switches were last read from Postgres.",
                time.time() - ks.last_sync_at if ks.last_sync_at else float("nan"),
            ),
        ]
        for name, doc, value in gauges:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        counters = [
            (
                "costwatch_fleet_replicated_events",
                "Events this daemon added to the fleet ledger.",
                st.inserted_events,
            ),
            ("costwatch_fleet_replication_batches", "Batches committed into the fleet ledger.", st.batches),
            (
                "costwatch_fleet_replication_errors",
                "Replication rounds that failed (Postgres down, slow, refused).",
                st.errors,
            ),
        ]
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
