"""The fleet kill switch: rows in `costwatch.killswitches`, announced with NOTIFY, engaged locally.

`engage`/`lift` (the daemon's ``POST /v1/killswitch`` with ``"fleet": true``) write the
row and ``pg_notify('costwatch_killswitch', …)`` in one transaction, so the notification
goes out exactly when the change is committed. Every daemon keeps one connection in
``LISTEN costwatch_killswitch``; a notification — or, as the fallback, every
``fleet_poll_s`` seconds — makes it read the engaged rows and mirror them into its local
registry as switches with source ``fleet:<id>``. From there the local path takes over
(DuckDB, the state file, the long polls of instrumented processes), so a daemon that
loses Postgres keeps the fleet switches it knew, and one that starts while a switch is
engaged engages it before it serves (`sync` runs in `start()`, before the HTTP server
accepts requests).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg

from costwatch.daemon.killswitch import parse_scope

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from costwatch.daemon.killswitch import KillSwitchRegistry

__all__ = ["CHANNEL", "SOURCE_PREFIX", "FleetKillSwitch"]

log = logging.getLogger("costwatch.daemon.fleet.killswitch")

CHANNEL = "costwatch_killswitch"
SOURCE_PREFIX = "fleet:"
_ENGAGED = (
    "SELECT id::text, scope, reason, source, extract(epoch FROM expires_at) FROM costwatch.killswitches"
    " WHERE lifted_at IS NULL AND (expires_at IS NULL OR expires_at > now()) ORDER BY engaged_at"
)


class FleetKillSwitch:
    """Writes fleet switches to Postgres and mirrors the engaged ones into the local registry."""

    def __init__(
        self,
        pool: ConnectionPool,
        conninfo: str,
        connect_kwargs: dict[str, Any],
        registry: KillSwitchRegistry,
        node: str,
        *,
        poll_s: float = 2.0,
        connect_timeout_s: float = 3.0,
    ) -> None:
        self.pool = pool
        self.conninfo = conninfo
        self.connect_kwargs = connect_kwargs
        self.registry = registry
        self.node = node
        self.poll_s = poll_s
        self.connect_timeout_s = connect_timeout_s
        self.listening = False
        self.last_sync_at: float | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None

    # -- writes (from the HTTP API) -------------------------------------------------------
    def engage(self, scope: dict[str, str], reason: str, source: str, for_s: float | None) -> dict[str, Any]:
        scope = parse_scope(scope)
        with self.pool.connection(timeout=self.connect_timeout_s) as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO costwatch.killswitches (scope, reason, source, node, expires_at)"
                " VALUES (%s, %s, %s, %s, CASE WHEN %s::float8 IS NULL THEN NULL"
                " ELSE now() + make_interval(secs => %s::float8) END)"
                " RETURNING id::text, extract(epoch FROM engaged_at), extract(epoch FROM expires_at)",
                [json.dumps(scope), reason, source, self.node, for_s, for_s],
            ).fetchone()
            assert row is not None
            conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, "engage " + row[0]])
        self._sync_now()  # this daemon's own apps need not wait for the notification
        return {
            "id": row[0],
            "scope": scope,
            "reason": reason,
            "source": source,
            "node": self.node,
            "engaged_at": float(row[1]),
            "expires_at": None if row[2] is None else float(row[2]),
        }

    def lift(self, scope: dict[str, str] | None, by: str) -> int:
        """Lift the fleet switches whose scope is exactly ``scope`` ({} = global); None lifts all."""
        wanted = None if scope is None else parse_scope(scope)
        with self.pool.connection(timeout=self.connect_timeout_s) as conn, conn.transaction():
            if wanted is None:
                cur = conn.execute(
                    "UPDATE costwatch.killswitches SET lifted_at = now(), lifted_by = %s WHERE lifted_at IS NULL",
                    [by],
                )
            else:
                cur = conn.execute(
                    "UPDATE costwatch.killswitches SET lifted_at = now(), lifted_by = %s"
                    " WHERE lifted_at IS NULL AND scope = %s::jsonb",
                    [by, json.dumps(wanted)],
                )
            lifted = cur.rowcount
            if lifted:
                conn.execute("SELECT pg_notify(%s, 'lift')", [CHANNEL])
        self._sync_now()
        return lifted

    def _sync_now(self) -> None:
        """After a committed change: apply it here at once; if that fails, the listener will."""
        try:
            self.sync()
        except Exception as exc:
            log.warning(
                "fleet kill switch: applying the change locally failed (%s); the listener retries", exc
            )

    def engaged(self) -> list[dict[str, Any]]:
        with self.pool.connection(timeout=self.connect_timeout_s) as conn:
            return [
                {"id": r[0], "scope": r[1], "reason": r[2], "source": r[3], "expires_at": r[4]}
                for r in conn.execute(_ENGAGED).fetchall()
            ]

    # -- mirroring into the local registry ----------------------------------------------------
    def sync(self, conn: psycopg.Connection | None = None) -> None:
        """Read the engaged fleet switches and make the local registry hold exactly those."""
        if conn is None:
            with self.pool.connection(timeout=self.connect_timeout_s) as pooled:
                rows = pooled.execute(_ENGAGED).fetchall()
        else:
            rows = conn.execute(_ENGAGED).fetchall()
        with self._lock:
            self.apply(rows)
        self.last_sync_at = time.time()
        self.last_error = None

    def apply(self, rows: list[tuple[Any, ...]]) -> None:
        wanted = {SOURCE_PREFIX + r[0]: r for r in rows}
        local = {ks.source for ks in self.registry.current().engaged if ks.source.startswith(SOURCE_PREFIX)}
        for source, (_id, scope, reason, origin, expires) in wanted.items():
            if source not in local:
                try:
                    self.registry.engage(
                        dict(scope or {}),
                        f"{reason} (fleet, by {origin})",
                        source,
                        None if expires is None else float(expires),
                    )
                except (TypeError, ValueError) as exc:  # a hand-written row with a bad scope: skip it alone
                    log.error("fleet kill switch %s not applied: %s", _id, exc)
        for source in local - set(wanted):
            self.registry.lift_by_source(source, "fleet")

    # -- the listener thread ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="costwatch-fleet-killswitch", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except Exception as exc:  # Postgres gone: keep what we know, poll for it again
                self.listening = False
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if line != self.last_error:
                    log.warning("fleet kill switch: %s (keeping the last known state; retrying)", line)
                self.last_error = line
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.poll_s)
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

    def _listen(self) -> None:
        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=max(1, round(self.connect_timeout_s)),
            **self.connect_kwargs,
        )
        self._conn = conn
        conn.execute(f"LISTEN {CHANNEL}")
        self.listening = True
        self.sync(conn)  # whatever changed while we were not listening
        next_poll = time.monotonic() + self.poll_s
        while not self._stop.is_set():
            # A notification (or a burst), else re-read every poll_s; short waits so that
            # shutdown never waits on an idle LISTEN.
            notified = False
            for _ in conn.notifies(timeout=0.25, stop_after=1):
                notified = True
            if self._stop.is_set():
                break
            if notified or time.monotonic() >= next_poll:
                self.sync(conn)
                next_poll = time.monotonic() + self.poll_s
