"""Background batching sender: bounded queue, disk spool, and the kill-switch long poll.

Modelled on sentry-python's worker/transport: the app thread only appends to a
bounded deque (no lock, no I/O, never raises); everything that costs time —
converting raw facts into ``UsageEvent``, encoding, HTTP, disk — happens on the
emitter thread. A second thread keeps one kill-switch long poll open, so a
switch arrives one round trip after it is engaged whatever the flush interval.
Drops are counted by named reason and reported to the daemon in the
``x-costwatch-dropped`` header.

The transport is `costwatch.connection` (stdlib ``http.client``): ``httpx``/``httpx2``
are patched by our own instrumentation in this process.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from typing import Any, Protocol

import msgspec

from costwatch import statefile
from costwatch.client_settings import ClientSettings
from costwatch.connection import DaemonConnection
from costwatch.events import UsageEvent, encode, encode_many
from costwatch.instrumentation import exit_budget, spans
from costwatch.instrumentation.killswitch import KillSwitchView
from costwatch.instrumentation.spool import Spool
from costwatch.protocol import IngestReply, KillSwitchState

__all__ = ["Emitter"]

log = logging.getLogger("costwatch.emitter")

_reply_decoder = msgspec.json.Decoder(IngestReply)
_state_decoder = msgspec.json.Decoder(KillSwitchState)
CONVERT_SLICE = 200  # records converted between GIL hand-backs (time.sleep(0)) to the app
LONG_POLL_S = 20.0  # how long the daemon may hold a kill-switch poll open
# Statuses that mean "try again later" rather than "these events are bad".
_RETRY_STATUSES = frozenset({401, 404, 408, 425, 429})


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


class _Backoff:
    """Exponential backoff with jitter, capped: the daemon being down must not cost CPU or latency."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self.until = 0.0

    def fail(self) -> None:
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** min(self.failures - 1, 16))
        self.until = time.monotonic() + delay * (0.5 + random.random() / 2)

    def ok(self) -> None:
        self.failures = 0
        self.until = 0.0

    @property
    def waiting(self) -> bool:
        return self.failures > 0 and time.monotonic() < self.until


class Emitter:
    """Ships usage events to the daemon; never blocks, never raises into the app."""

    connect_timeout_s = 0.5
    read_timeout_s = 5.0
    # How often to look for orphaned spool files of dead processes while all is well.
    replay_scan_s = 10.0

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
        self._backoff = _Backoff()
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

    def _read_state_file(self) -> None:
        """Adopt the daemon's mirrored state when the file changed since the last read (one stat)."""
        try:
            stamp = statefile.stamp(self._state_path)
            if stamp is None or stamp == self._state_stamp:
                return
            self._state_stamp = stamp
            mirrored = statefile.read(self._state_path)
            if mirrored is not None:
                self.killswitch.adopt(mirrored.killswitch)
                self.hard_limits = mirrored.hard_limits
        except Exception as exc:  # a damaged file must not stop the app
            self._log_once("statefile", exc, "costwatch could not read %s: %r", self._state_path, exc)

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

    def _encodable(self, events: list[UsageEvent]) -> list[UsageEvent]:
        """Drop events msgspec cannot encode (a bad value smuggled into a field), counted."""
        good = []
        for event in events:
            try:
                encode(event)
            except Exception as exc:
                self._counts["conversion_errors"] += 1
                self._log_once("encode", exc, "costwatch could not encode a usage event: %r", exc)
            else:
                good.append(event)
        return good

    def _deliver(self, events: list[UsageEvent], spool_only: bool = False) -> bool:
        if spool_only or self._backoff.waiting:
            return self._to_spool(events)
        if self._post(events):
            return True
        self._backoff.fail()
        return self._to_spool(events)

    def _to_spool(self, events: list[UsageEvent]) -> bool:
        try:
            try:
                self._spool.append(events)
            except (TypeError, ValueError, msgspec.EncodeError):
                self._spool.append(self._encodable(events))
            return True
        except OSError as exc:
            self._counts["dropped_spool_error"] += len(events)
            self._log_once(
                "spool", exc, "costwatch could not spool events to %s: %s", self._spool.directory, exc
            )
            return False

    # -- HTTP ------------------------------------------------------------------------------

    def _post(self, events: list[UsageEvent], replay: bool = False) -> bool:
        """POST one batch; True when the daemon has dealt with it (stored or rejected for good)."""
        try:
            body = encode_many(events)
        except (TypeError, ValueError, msgspec.EncodeError):
            events[:] = self._encodable(events)  # in place: a failed post spools only the good ones
            if not events:
                return True
            body = encode_many(events)
        drops, dropped_header = self._drop_header()
        self._inflight = events
        try:
            status, data = self._authorized("POST", "/v1/events", body, dropped_header)
        except OSError as exc:  # every transport failure (costwatch.connection)
            self._counts["post_failures"] += 1
            self._log_once("post", exc, "costwatch daemon unreachable at %s: %r", self.settings.url, exc)
            return False
        finally:
            self._inflight = None
        reply = None
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            reply = _reply_decoder.decode(data)
        if 200 <= status < 300 and reply is not None:
            self._contact(reply.killswitch, drops)
            self._count_stored(events, reply, replay)
            return True
        if status == 413 and len(events) > 1:
            half = len(events) // 2
            first = self._post(events[:half], replay)
            return self._post(events[half:], replay) and first
        if 400 <= status < 500 and status not in _RETRY_STATUSES:
            if reply is not None:
                self._contact(reply.killswitch, drops)
                self._count_stored(events, reply, replay)
            if reply is None or not reply.rejected:
                self._counts["rejected"] += len(events)
                self._log_once(
                    "rejected", TypeError, "costwatch daemon refused a batch (%d): %.300r", status, data
                )
            return True
        self._counts["post_failures"] += 1
        self._log_once(f"status{status}", TypeError, "costwatch daemon answered %d: %.300r", status, data)
        return False

    def _count_stored(self, events: list[UsageEvent], reply: IngestReply, replay: bool) -> None:
        rejected = min(len(reply.rejected), len(events))
        if rejected:
            self._counts["rejected"] += rejected
            self._log_once(
                "rejected", ValueError, "costwatch daemon rejected events: %.500r", reply.rejected[:3]
            )
        self._counts["replayed" if replay else "sent"] += len(events) - rejected

    def _contact(self, state: KillSwitchState, drops: dict[str, int] | None = None) -> None:
        """A successful ingest: adopt a newer state (the long poll may have one already), reset backoff."""
        self.killswitch.update(state, newer_only=True)
        if self._backoff.failures:
            self._next_scan = 0.0  # recovered: replay the spool now
        self._backoff.ok()
        if drops is not None:
            self._reported = drops

    def _drop_header(self) -> tuple[dict[str, int], str | None]:
        now = {
            "queue_full": self._dropped_full,
            "spool_full": self._spool.dropped,
            "spool_damaged": self._spool.damaged,
            "spool_error": self._counts["dropped_spool_error"],
            "conversion_error": self._counts["conversion_errors"],
        }
        deltas = [(k, v - self._reported.get(k, 0)) for k, v in now.items()]
        header = ",".join(f"{k}={d}" for k, d in deltas if d > 0)
        return now, header or None

    def _authorized(
        self, method: str, path: str, body: bytes | None, dropped: str | None, watch: bool = False
    ) -> tuple[int, bytes]:
        """One request; on 401 reread the token (the daemon may have created it since) and retry once."""
        if not self._token_loaded:
            self._token = self.settings.resolved_token()
            self._token_loaded = True
        status, data = self._request(method, path, body, self._headers(body, dropped), watch)
        if status == 401:
            fresh = self.settings.resolved_token()
            if fresh != self._token:
                self._token = fresh
                status, data = self._request(method, path, body, self._headers(body, dropped), watch)
        return status, data

    def _headers(self, body: bytes | None, dropped: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if dropped:
            headers["x-costwatch-dropped"] = dropped
        return headers

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], watch: bool = False
    ) -> tuple[int, bytes]:
        """A request on a kept-alive connection (the long poll has its own)."""
        if watch:
            return self._watch_conn.request(method, path, body, headers, self._watch_wait_s + 5.0)
        return self._conn.request(method, path, body, headers, self.read_timeout_s)

    # -- kill-switch polling and spool replay ---------------------------------------------

    @property
    def _watch_wait_s(self) -> float:
        """How long the daemon may hold a long poll: fail-closed needs an answer well within its delay."""
        if self.settings.fail_closed:
            return min(LONG_POLL_S, max(0.5, self.settings.fail_closed_after_s / 2))
        return LONG_POLL_S

    def _watch(self) -> None:
        """Thread ``costwatch-killswitch``: one long poll open at a time, so a change arrives in one round trip.

        The daemon answers ``GET /v1/killswitch?version=V&wait=S`` when the state's version
        is no longer V, or after S seconds. A server that answers at once with the same
        version (an older daemon) is polled every ``killswitch_poll_s`` instead.
        """
        backoff = _Backoff()
        while not self._stopping.is_set():
            asked = self.killswitch.version
            started = time.monotonic()
            self._counts["polls"] += 1
            path = f"/v1/killswitch?version={asked}&wait={self._watch_wait_s:g}"
            state = None
            try:
                status, data = self._authorized("GET", path, None, None, watch=True)
                state = _state_decoder.decode(data) if status == 200 else None
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                if not self._stopping.is_set():
                    self._log_once(
                        "poll",
                        exc,
                        "costwatch could not poll the kill switch at %s: %r",
                        self.settings.url,
                        exc,
                    )
            if self._stopping.is_set():
                return
            if state is None:
                self._read_state_file()  # the daemon may still write it (slow, or restarting)
                backoff.fail()
                self._stopping.wait(max(0.0, backoff.until - time.monotonic()))
                continue
            backoff.ok()
            self.killswitch.update(state)
            if self._backoff.failures:  # the daemon is back: the emitter thread sends and replays now
                self._backoff.ok()
                self._next_scan = 0.0
                self._wake.set()
            if state.version == asked:  # answered without waiting: plain polling
                self._stopping.wait(max(0.0, self._poll_s - (time.monotonic() - started)))

    def _stop_watching(self, timeout: float = 0.5) -> None:
        """Stop the long-poll thread: shutting its socket down ends the read it is blocked in."""
        self._stopping.set()
        self._watch_conn.interrupt()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)
        self._watch_conn.close()

    def _maybe_replay(self) -> None:
        """Replay one spool file per tick (ours or a dead process's) while the daemon answers.

        After a failure, the first replay once the backoff has run out is the probe that
        finds the daemon back (the long poll, when it gets an answer first, says so too).
        """
        if self._backoff.waiting:
            return
        now = time.monotonic()
        if not self._spool.pending_own and now < self._next_scan:
            return
        self._next_scan = now + self.replay_scan_s  # also when claiming fails (read-only disk)
        self._spool.seal()
        claim = self._spool.claim_next()
        if claim is None:
            return
        for start in range(0, len(claim.events), self._batch):
            if not self._post(claim.events[start : start + self._batch], replay=True):
                self._spool.release(claim)
                self._backoff.fail()
                return
        self._spool.done(claim)
        self._next_scan = 0.0  # there may be more: next tick at once (it sends live events first)
        self._wake.set()

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
