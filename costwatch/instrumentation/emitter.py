"""Background batching sender: the app's side (a bounded queue) and the emitter thread.

Modelled on sentry-python's worker/transport: the app thread only appends to a
bounded deque (no lock, no I/O, never raises); everything that costs time —
converting raw facts into ``UsageEvent``, encoding, HTTP, disk — happens on the
emitter thread. Drops are counted by named reason and reported to the daemon.
`Emitter` is assembled from two mixins that share its state: `Delivery`
(`costwatch.instrumentation.delivery`: the POST, the spool and its replay) and
`KillSwitchWatch` (`costwatch.instrumentation.watch`: the kill-switch long poll thread
and the daemon's state file).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Protocol

from costwatch import statefile
from costwatch.client_settings import ClientSettings
from costwatch.connection import DaemonConnection
from costwatch.events import UsageEvent
from costwatch.instrumentation import exit_budget, spans
from costwatch.instrumentation.delivery import Backoff, Delivery
from costwatch.instrumentation.killswitch import KillSwitchView
from costwatch.instrumentation.spool import Spool
from costwatch.instrumentation.watch import KillSwitchWatch

__all__ = ["Emitter"]

log = logging.getLogger("costwatch.emitter")

CONVERT_SLICE = 200  # records converted between GIL hand-backs (time.sleep(0)) to the app


class _Item(Protocol):
    def to_event(self) -> UsageEvent | None: ...


class _Waiter:
    """One flush() call waiting for the emitter thread to reach it."""

    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = True

    def done(self, ok: bool) -> None:
        self.ok = ok
        self.event.set()


class Emitter(Delivery, KillSwitchWatch):
    """Ships usage events to the daemon; never blocks, never raises into the app."""

    killswitch: KillSwitchView

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.killswitch = KillSwitchView(
            fail_closed=settings.fail_closed,
            fail_closed_after_s=settings.fail_closed_after_s,
            url=settings.url,
        )
        self._state_stamp: int | None = None
        self.hard_limits = 0  # as the state file says; 0 also when there is no file
        self._batch = settings.batch_max_events
        self._wake_at = settings.batch_max_events - 1  # queue length (before append) that wakes the thread
        self._interval = settings.flush_interval_s
        self._poll_s = settings.killswitch_poll_s
        self._spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self._closed = False
        self._logged: set[tuple[str, type]] = set()
        self._reset_runtime()
        # The daemon's state file: the kill switch and whether hard limits exist, known at import
        # without a network wait (a hung daemon must not hold the app's first call).
        self._state_path = statefile.path_for(settings.state_dir, self._conn.port)
        self._read_state_file()
        _live.add(self)

    def _reset_runtime(self) -> None:
        """Per-process state: rebuilt in a forked child so nothing of the parent's is reused."""
        self._pid = os.getpid()
        self._max = 0 if self._closed else self.settings.queue_max_events
        self._queue: deque[Any] = deque()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._wake = threading.Event()
        self._stop = False
        self._conn = DaemonConnection(self.settings.url, self.connect_timeout_s)
        self._watch_conn = DaemonConnection(self.settings.url, self.connect_timeout_s)  # the long poll's
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._token: str | None = None
        self._token_loaded = False
        self._backoff = Backoff()
        self._inflight: list[UsageEvent] | None = None
        self._taken = 0  # items removed from the queue (exact: one consumer at a time)
        self._settled = 0  # of those, items delivered, spooled or dropped
        self._dropped_full = 0
        self._dropped_closed = 0
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "sent",
                "replayed",
                "rejected",
                "conversion_errors",
                "post_failures",
                "polls",
                "dropped_spool_error",
            ),
            0,
        )
        self._reported: dict[str, int] = {}
        self._next_scan = 0.0
        self._cpu_ns = 0  # the emitter thread's CPU time so far (benchmarks read it from stats())

    # -- app side --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (idempotent); the fail-closed clock starts now."""
        if self._thread is not None or self._closed:
            return
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="costwatch-emitter", daemon=True)
            if self.killswitch.version < 0:
                self.killswitch.restart_clock()
            thread.start()
            self._thread = thread
            watcher = threading.Thread(target=self._watch, name="costwatch-killswitch", daemon=True)
            watcher.start()
            self._watcher = watcher

    def submit(self, item: _Item) -> None:
        """HOT PATH: append to the bounded queue; a full queue drops the new item (counted)."""
        try:
            queue = self._queue
            n = len(queue)
            if n < self._max:
                queue.append(item)
                if self._thread is None:
                    self.start()
                elif n == self._wake_at:
                    self._wake.set()
            elif self._closed:
                self._dropped_closed += 1
            else:
                self._dropped_full += 1
        except Exception:
            pass

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything submitted so far was delivered or spooled; False on timeout."""
        deadline = time.monotonic() + timeout
        if not self._queue and self._settled == self._taken:
            return True
        thread = self._thread
        if thread is threading.current_thread():
            return False  # called from to_event() on our own thread: waiting would deadlock
        if thread is None and not self._closed:
            with contextlib.suppress(RuntimeError):  # no new threads at interpreter shutdown
                self.start()
            thread = self._thread
        if thread is None or not thread.is_alive():
            return self._drain_here(deadline)
        waiter = _Waiter()
        with self._flush_lock:
            self._waiters.append(waiter)
        self._wake.set()
        if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
            return False
        return waiter.ok

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, deliver or spool what is queued within ``timeout``, stop the thread."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self._closed = True
        self._max = 0
        ok = self.flush(timeout)
        thread = self._thread
        self._stop = True
        self._wake.set()
        self._stop_watching(max(0.0, min(0.5, deadline - time.monotonic())))
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, min(0.5, deadline - time.monotonic())))
        if not ok or (thread is not None and thread.is_alive()):
            self._spool_leftovers()
        if thread is None or not thread.is_alive():
            self._conn.close()
        self._spool.close()

    def stats(self) -> dict[str, int]:
        """Counters; ``submitted`` counts every submit() call, drops included."""
        queued = len(self._queue)
        stats = dict(self._counts)
        stats.update(
            submitted=self._taken + queued + self._dropped_full + self._dropped_closed,
            queued=queued,
            dropped_queue_full=self._dropped_full,
            dropped_closed=self._dropped_closed,
            spooled=self._spool.written,
            spool_dropped=self._spool.dropped,
            spool_damaged=self._spool.damaged,
            spool_bytes=self._spool.size,
            emitter_cpu_us=self._cpu_ns // 1000,
        )
        return stats

    # -- emitter thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._tick()
            except Exception as exc:  # our bug must not kill the thread
                self._log_once("emitter", exc, "costwatch emitter error: %r", exc)
            self._cpu_ns = time.thread_time_ns()

    def _tick(self) -> None:
        with self._flush_lock:
            waiters, self._waiters = self._waiters, []
        ok = False
        try:
            ok = self._drain(len(self._queue))
        finally:
            for waiter in waiters:
                waiter.done(ok)
        if not self._stop:
            self._maybe_replay()
        self.killswitch.refresh()

    def _drain(self, limit: int, spool_only: bool = False) -> bool:
        """Send (or spool) up to ``limit`` queued items in batches; False if some were lost."""
        ok = True
        queue = self._queue
        while limit > 0:
            items = []
            for _ in range(min(self._batch, limit)):
                try:
                    items.append(queue.popleft())
                except IndexError:
                    limit = 0
                    break
            if not items:
                break
            limit -= len(items)
            self._taken += len(items)
            try:
                events = self._convert(items)
                if events:
                    ok = self._deliver(events, spool_only) and ok
            finally:
                self._settled += len(items)
        return ok

    def _convert(self, items: list[Any]) -> list[UsageEvent]:
        """Convert in slices, yielding the GIL between them so the app's threads keep running."""
        events = []
        spans.pin()  # one TracerProvider check per batch, not per event
        try:
            for start in range(0, len(items), CONVERT_SLICE):
                if start:
                    time.sleep(0)
                for item in items[start : start + CONVERT_SLICE]:
                    try:
                        event = item.to_event()
                    except Exception as exc:
                        self._counts["conversion_errors"] += 1
                        self._log_once("convert", exc, "costwatch could not build a usage event: %r", exc)
                        continue
                    if type(event) is UsageEvent:
                        events.append(event)
                    elif event is not None:
                        self._counts["conversion_errors"] += 1
                        self._log_once("convert", TypeError, "costwatch: to_event() returned %r", type(event))
        finally:
            spans.unpin()
        return events

    # -- shutdown, fork --------------------------------------------------------------------

    def _drain_here(self, deadline: float) -> bool:
        """No thread to do it (never started, or interpreter exit): drain in the caller's thread."""
        with self._start_lock:
            remaining = deadline - time.monotonic()
            spool_only = remaining < 1.0 or self._backoff.waiting
            # Keep within the deadline: a hanging daemon costs at most one short read timeout,
            # then the backoff sends the rest to the spool.
            self._conn.close()
            saved = self.read_timeout_s
            self.read_timeout_s = max(0.1, min(saved, remaining - 0.5))
            try:
                return self._drain(len(self._queue), spool_only=spool_only)
            finally:
                self.read_timeout_s = saved

    def _spool_leftovers(self) -> None:
        """Exit deadline passed: put what is still queued or in flight on disk (replay dedupes by id)."""
        inflight = self._inflight
        if inflight:
            self._to_spool(list(inflight))
        self._drain(len(self._queue), spool_only=True)

    def _after_fork_in_child(self) -> None:
        self._spool.after_fork_in_child()
        self._reset_runtime()

    def _log_once(self, where: str, exc: BaseException | type, message: str, *args: object) -> None:
        key = (where, exc if isinstance(exc, type) else type(exc))
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message, *args)


_live: weakref.WeakSet[Emitter] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for emitter in list(_live):
        with contextlib.suppress(Exception):
            emitter.close(exit_budget.remaining(emitter.settings.exit_flush_timeout_s))


def _after_fork_in_child() -> None:
    for emitter in list(_live):
        with contextlib.suppress(Exception):
            emitter._after_fork_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
