"""The daemon's kill-switch registry: persisted in `killswitches`, served from memory.

`state()` is on every ingest reply and every poll, so it is a cached object
rebuilt only on change. Its ``version`` starts at the daemon's start time in
milliseconds and is bumped on every change, so a client that compares
versions sees a change across daemon restarts too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import duckdb

from costwatch.protocol import SCOPE_KEYS, KillSwitch, KillSwitchState

__all__ = ["KillSwitchRegistry", "ScopeError", "StateWatch", "parse_scope"]

log = logging.getLogger("costwatch.daemon.killswitch")
Writer = Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any]


class ScopeError(ValueError):
    """A scope key outside `SCOPE_KEYS` or an empty value."""


def parse_scope(scope: dict[str, str] | None) -> dict[str, str]:
    """Validate a scope dict; ``{}`` (or None) is the global scope."""
    out: dict[str, str] = {}
    for key, value in (scope or {}).items():
        if key not in SCOPE_KEYS:
            raise ScopeError(f"unknown scope key {key!r}: use one of {', '.join(SCOPE_KEYS)}")
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ScopeError(f"scope {key} needs a non-empty value (at most 256 characters)")
        out[key] = value
    return out


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


class KillSwitchRegistry:
    """Engage/lift kill switches; thread-safe; writes go through the store's writer."""

    def __init__(self, write: Writer, rows: list[tuple[Any, ...]] | None = None) -> None:
        self._write = write
        self._lock = threading.RLock()
        self._engaged: dict[str, KillSwitch] = {}
        self._version = int(time.time() * 1000)
        self._state = KillSwitchState(engaged=[], version=self._version)
        self._next_expiry: float | None = None
        self._listeners: list[Callable[[], None]] = []
        for row in rows or []:
            ks = _from_row(row)
            self._engaged[ks.id] = ks
        self._rebuild()

    @staticmethod
    def load(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
        """Rows of the switches still engaged (read at startup)."""
        return con.execute(
            "SELECT id, scope, reason, source, epoch(engaged_at), epoch(expires_at) FROM killswitches"
            " WHERE lifted_at IS NULL ORDER BY engaged_at"
        ).fetchall()

    def state(self) -> KillSwitchState:
        """Current state; expired switches are lifted on the way (cheap when nothing expires)."""
        nxt = self._next_expiry
        if nxt is not None and nxt <= time.time():
            self._expire()
        return self._state

    def current(self) -> KillSwitchState:
        """The state as last built, without sweeping expiries (listeners read it mid-change)."""
        return self._state

    def engage(
        self, scope: dict[str, str] | None, reason: str, source: str, expires_at: float | None = None
    ) -> KillSwitch:
        """Engage a switch; engaging the same scope from the same source again returns the existing one."""
        scope = parse_scope(scope)
        with self._lock:
            for ks in self._engaged.values():
                if ks.scope == scope and ks.source == source:
                    return ks
            ks = KillSwitch(
                id=str(uuid.uuid4()),
                scope=scope,
                reason=reason,
                source=source,
                engaged_at=time.time(),
                expires_at=expires_at,
            )

            def insert(cur: duckdb.DuckDBPyConnection) -> None:
                cur.execute(
                    "INSERT INTO killswitches (id, scope, reason, source, engaged_at, expires_at)"
                    " VALUES (?, MAP(?::VARCHAR[], ?::VARCHAR[]), ?, ?, ?, ?)",
                    [
                        ks.id,
                        list(scope.keys()),
                        list(scope.values()),
                        reason,
                        source,
                        _ts(ks.engaged_at),
                        _ts(expires_at),
                    ],
                )

            self._write(insert)
            self._engaged[ks.id] = ks
            self._rebuild()
            return ks

    def lift(self, scope: dict[str, str] | None, by: str) -> int:
        """Lift the switches whose scope is exactly ``scope`` ({} = the global one); None lifts all."""
        wanted = None if scope is None else parse_scope(scope)
        with self._lock:
            ids = [k.id for k in self._engaged.values() if wanted is None or k.scope == wanted]
            return self._lift_ids(ids, by)

    def lift_by_source(self, source: str, by: str | None = None) -> int:
        """Lift what one source engaged (a rule that recovered, a resolved alert)."""
        with self._lock:
            ids = [k.id for k in self._engaged.values() if k.source == source]
            return self._lift_ids(ids, by or source)

    def _lift_ids(self, ids: list[str], by: str, wait: bool = True) -> int:
        """Persist, then forget; ``wait=False`` (expiry, found on the request path) forgets first
        and persists from a helper thread so a poll never waits behind a group commit."""
        if not ids:
            return 0

        def update(cur: duckdb.DuckDBPyConnection) -> None:
            cur.execute(
                "UPDATE killswitches SET lifted_at = now(), lifted_by = ? WHERE list_contains(?, id)",
                [by, ids],
            )

        if wait:
            self._write(update)
        else:
            threading.Thread(target=self._persist_quietly, args=(update,), daemon=True).start()
        for i in ids:
            self._engaged.pop(i, None)
        self._rebuild()
        return len(ids)

    def _persist_quietly(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> None:
        try:
            self._write(fn)
        except Exception as exc:  # an expired switch still reads as expired after restart
            log.warning("recording a kill-switch expiry failed: %s", exc)

    def _expire(self) -> None:
        with self._lock:
            now = time.time()
            ids = [k.id for k in self._engaged.values() if k.expires_at is not None and k.expires_at <= now]
            if ids:
                self._lift_ids(ids, "expired", wait=False)
            else:
                self._rebuild()

    @property
    def next_expiry(self) -> float | None:
        """Epoch seconds when the next engaged switch expires (None: none will)."""
        return self._next_expiry

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (from whichever thread changed it) after every state change."""
        self._listeners.append(callback)

    def _rebuild(self) -> None:
        self._version += 1
        engaged = sorted(self._engaged.values(), key=lambda k: k.engaged_at)
        expiries = [k.expires_at for k in engaged if k.expires_at is not None]
        self._next_expiry = min(expiries) if expiries else None
        self._state = KillSwitchState(engaged=engaged, version=self._version)
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # a closed event loop must not stop an engage
                log.debug("kill-switch listener failed", exc_info=True)


class StateWatch:
    """Long polls of ``GET /v1/killswitch?version=V&wait=S``, answered when the state changes.

    An instrumented process keeps one such request open, so an engaged switch reaches it
    in one round trip instead of at its next poll, and an idle process costs the daemon
    one request per ``wait`` seconds. Changes come from any thread (the request handlers'
    pool, the rule evaluator), so they are handed to the event loop. ``close()`` (daemon
    shutdown) answers every open poll at once, so they do not hold the graceful shutdown.
    """

    def __init__(self, registry: KillSwitchRegistry) -> None:
        self._registry = registry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self.closed = False
        registry.add_listener(self._notify)

    async def wait(self, version: int, timeout: float) -> KillSwitchState:
        """The state once its version differs from ``version``, or after ``timeout`` seconds."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
        deadline = time.time() + timeout
        state = self._registry.state()
        while state.version == version and not self.closed:
            remaining = deadline - time.time()
            expiry = self._registry.next_expiry
            if expiry is not None:  # an expiry is a change nobody announces: wake for it
                remaining = min(remaining, expiry - time.time() + 0.001)
            if remaining <= 0:
                break
            changed = self._changed
            assert changed is not None
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass
            state = self._registry.state()
        return state

    def close(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _wake(self) -> None:
        changed = self._changed
        self._changed = asyncio.Event()  # the next waiters wait for the next change
        if changed is not None:
            changed.set()


def _from_row(row: tuple[Any, ...]) -> KillSwitch:
    ks_id, scope, reason, source, engaged_at, expires_at = row
    return KillSwitch(
        id=ks_id,
        scope=dict(scope or {}),
        reason=reason,
        source=source,
        engaged_at=float(engaged_at),
        expires_at=None if expires_at is None else float(expires_at),
    )
