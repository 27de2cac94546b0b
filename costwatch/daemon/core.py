"""The parts every daemon has, whatever else it runs: settings, token, pricer, metrics, store, kill switches.

`DaemonCore` opens them in order from the settings. The daemon's collaborators (the rules
engine, the lease authority, fleet mode) are built on them by
`costwatch.daemon.server.build_daemon`, and the HTTP API (`costwatch.daemon.app`) reads
them: both import this module, and neither imports the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from costwatch.daemon.killswitch import KillSwitchRegistry, StateWatch
from costwatch.daemon.metrics import DaemonMetrics
from costwatch.daemon.store import Store
from costwatch.pricing import Pricer
from costwatch.settings import DaemonSettings, ensure_token

__all__ = ["DaemonCore"]


class DaemonCore:
    """The store (and its writer thread) open, the kill-switch registry loaded from it; `close()` closes the store.

    Reads run on their own cursors, writes go through the store's writer thread (never call
    `Store.call` or the kill-switch registry *from* the writer thread).
    """

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.token = settings.token or ensure_token(settings.state_dir)
        self.pricer = Pricer(settings.prices)
        self.metrics = DaemonMetrics(killswitch_state=lambda: self.killswitches.state())
        self.store = Store(
            settings.db_path,
            self.pricer,
            memory_limit=settings.duckdb_memory_limit,
            threads=settings.duckdb_threads,
            timezone=settings.timezone,
            wal_autocheckpoint=settings.duckdb_wal_autocheckpoint,
            on_commit=self.metrics.observe_commit,
        )
        try:
            self.metrics.registry.register(_StoreHealth(self.store))
            rows = self.store.read(KillSwitchRegistry.load)
            self.killswitches = KillSwitchRegistry(self.store.call, rows)
            self.killswitch_watch = StateWatch(self.killswitches)
        except BaseException:
            self.store.close()
            raise

    def close(self) -> None:
        """Flush the writer, checkpoint and close the database (idempotent)."""
        self.store.close()


class _StoreHealth(Collector):
    """`costwatch_store_healthy` at scrape time: 0 while /healthz reports the store degraded."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "costwatch_store_healthy",
            "1 while the store is healthy, 0 while /healthz reports it degraded (disk full, unwritable, failed commit).",
        )
        family.add_metric([], 0.0 if self._store.health() else 1.0)
        yield family
