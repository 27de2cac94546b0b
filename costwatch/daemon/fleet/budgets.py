"""Fleet hard budgets: each daemon leases slices of one limit from Postgres.

The host lease model (`costwatch.daemon.leases`), one level up. Per (budget, group, window)
the ledger holds the limit (`costwatch.budgets`) and one row per daemon
(`costwatch.budget_slices`): ``granted``, what that daemon may use this window in all, and
``spent``, its recorded spend as it last reported it. The invariant, kept by taking every
slice inside one transaction that holds the budget row ``FOR UPDATE``::

    sum over daemons of max(granted, spent) <= limit

Each daemon's lease authority then treats its ``granted`` as the limit for its own processes
(`LeaseService.fleet_limit`), so its recorded spend plus what its processes hold never passes
it. A daemon asks for more only when what is left of its slice is less than a process wants:
most lease exchanges never reach Postgres. A daemon renews its rows every third of
``fleet_slice_ttl_s`` (reporting its spend, and handing back what it does not use once no
process asked for a while); a row not renewed in time — a dead daemon — shrinks back to its
spent at the next transaction on that budget.

Postgres down: a daemon keeps the slices it holds and gets no more (calls beyond them are
refused: a hard budget fails closed).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from costwatch.daemon.rules import BudgetRule

__all__ = ["FleetBudgets"]

log = logging.getLogger("costwatch.daemon.fleet.budgets")

SLICE_FRACTION = 0.1  # one top-up takes at most this share of the limit (and at least what is asked)


@dataclass
class _Slice:
    budget: str
    group: str
    window: str
    granted: float = 0.0
    recorded: float = 0.0  # the host's recorded spend in the window, as last seen
    outstanding: float = 0.0  # granted to its processes and not yet consumed, as last seen
    used_at: float = 0.0  # last lease exchange that touched it (monotonic)


class FleetBudgets:
    """The `LeaseService.fleet_limit` seam, backed by Postgres; plus the renewal thread."""

    def __init__(
        self, pool: ConnectionPool, node: str, *, ttl_s: float = 30.0, connect_timeout_s: float = 3.0
    ) -> None:
        self.pool = pool
        self.node = node
        self.ttl_s = ttl_s
        self.connect_timeout_s = connect_timeout_s
        self._slices: dict[tuple[str, str, str], _Slice] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = {"topups": 0, "renewals": 0, "errors": 0}
        self.last_error: str | None = None
        self._valid_until = 0.0  # monotonic: slices count as ours until then (last success + ttl/2)

    # -- the seam (called by the lease authority, under its lock) -------------------------------
    def node_limit(
        self, rule: BudgetRule, group: str, window: str, recorded: float, outstanding: float, want: float
    ) -> float:
        """What this daemon may use in all this window; tops up from Postgres when short of ``want``."""
        key = (rule.name, group, window)
        with self._lock:
            sl = self._slices.get(key)
            if sl is None:
                sl = self._slices[key] = _Slice(rule.name, group, window)
                self._drop_other_windows(rule.name, group, window)
            now = time.monotonic()
            sl.recorded, sl.outstanding, sl.used_at = recorded, outstanding, now
            free = sl.granted - recorded - outstanding
            if (want <= 0 or (free >= want and sl.granted > 0)) and now < self._valid_until:
                return sl.granted
            try:
                sl.granted = self._top_up(rule, sl, want - max(free, 0.0))
                self._valid_until = time.monotonic() + self.ttl_s / 2
                self.counters["topups"] += 1
                self.last_error = None
            except Exception as exc:
                self._failed("taking a fleet budget slice", exc)
                if now >= self._valid_until:
                    # Not renewed for half a TTL: the fleet may already have taken the slice back
                    # (as from a dead daemon). Grant nothing new; what processes hold runs out.
                    return recorded + outstanding
            return sl.granted

    def _top_up(self, rule: BudgetRule, sl: _Slice, short: float) -> float:
        key = [sl.budget, sl.group, sl.window]
        with self.pool.connection(timeout=self.connect_timeout_s) as conn, conn.transaction():
            conn.execute(
                "INSERT INTO costwatch.budgets (budget, grp, window_id, limit_value, unit) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (budget, grp, window_id) DO NOTHING",
                [*key, float(rule.limit), rule.unit],
            )
            # The budget row, locked until COMMIT: daemons take slices of one budget one at a time.
            row = conn.execute(
                "SELECT limit_value FROM costwatch.budgets WHERE budget = %s AND grp = %s AND window_id = %s"
                " FOR UPDATE",
                key,
            ).fetchone()
            assert row is not None
            limit = float(rule.limit)
            if float(row[0]) != limit:  # the rule changed: the last daemon to take a slice sets the limit
                conn.execute(
                    "UPDATE costwatch.budgets SET limit_value = %s, unit = %s, updated_at = now()"
                    " WHERE budget = %s AND grp = %s AND window_id = %s",
                    [limit, rule.unit, *key],
                )
            # A daemon that stopped renewing (dead) keeps only what it spent.
            conn.execute(
                "UPDATE costwatch.budget_slices SET granted = spent, updated_at = now()"
                " WHERE budget = %s AND grp = %s AND window_id = %s AND node <> %s"
                " AND expires_at < now() AND granted > spent",
                [*key, self.node],
            )
            others, live_others = conn.execute(
                "SELECT coalesce(sum(greatest(granted, spent)), 0), count(*) FILTER (WHERE expires_at >= now())"
                " FROM costwatch.budget_slices WHERE budget = %s AND grp = %s AND window_id = %s AND node <> %s",
                [*key, self.node],
            ).fetchone()  # type: ignore[misc]
            mine = conn.execute(
                "SELECT granted FROM costwatch.budget_slices"
                " WHERE budget = %s AND grp = %s AND window_id = %s AND node = %s",
                [*key, self.node],
            ).fetchone()
            # After a restart the ledger remembers what this daemon held.
            granted = max(sl.granted, float(mine[0]) if mine else 0.0, sl.recorded)
            free = limit - float(others) - granted
            share = free / (int(live_others) + 1)
            extra = max(0.0, min(free, max(short, min(share, limit * SLICE_FRACTION))))
            granted += extra
            conn.execute(
                "INSERT INTO costwatch.budget_slices (budget, grp, window_id, node, granted, spent, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))"
                " ON CONFLICT (budget, grp, window_id, node) DO UPDATE SET granted = excluded.granted,"
                " spent = excluded.spent, expires_at = excluded.expires_at, updated_at = now()",
                [*key, self.node, granted, sl.recorded, self.ttl_s],
            )
        return granted

    def _drop_other_windows(self, budget: str, group: str, window: str) -> None:
        for key in [k for k in self._slices if k[0] == budget and k[1] == group and k[2] != window]:
            del self._slices[key]

    # -- renewal ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="costwatch-fleet-budgets", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as exc:
                self._failed("renewing fleet budget slices", exc)

    def renew(self) -> None:
        """Report spend and extend every slice; hand back the unused part of idle ones.

        Under the same lock as top-ups: a renewal never lowers a slice a top-up just raised.
        """
        with self._lock:
            now = time.monotonic()
            slices = [sl for sl in self._slices.values() if sl.granted > 0]
            if not slices:
                return
            with self.pool.connection(timeout=self.connect_timeout_s) as conn, conn.transaction():
                for sl in slices:
                    if now - sl.used_at > self.ttl_s:  # no process asked for a while: keep what is spent
                        sl.granted = sl.recorded + sl.outstanding
                    row = conn.execute(
                        "UPDATE costwatch.budget_slices SET granted = least(granted, %s), spent = %s,"
                        " expires_at = now() + make_interval(secs => %s), updated_at = now()"
                        " WHERE budget = %s AND grp = %s AND window_id = %s AND node = %s RETURNING granted",
                        [sl.granted, sl.recorded, self.ttl_s, sl.budget, sl.group, sl.window, self.node],
                    ).fetchone()
                    # The fleet may have shrunk an expired slice meanwhile: never hold more than the ledger says.
                    sl.granted = min(sl.granted, float(row[0])) if row else 0.0
            self._valid_until = time.monotonic() + self.ttl_s / 2
            self.counters["renewals"] += 1

    def _failed(self, what: str, exc: BaseException) -> None:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if line != self.last_error:
            log.warning("%s failed: %s (keeping the slices held)", what, line)
        self.last_error = line
        self.counters["errors"] += 1
