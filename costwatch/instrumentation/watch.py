"""The process's live view of the kill switch: the `KillSwitchWatch` half of `Emitter`.

Thread ``costwatch-killswitch`` keeps one long poll open, so a switch arrives one round trip
after it is engaged whatever the flush interval; while the daemon does not answer, the
state it mirrors into its state file (`costwatch.statefile`) is adopted when that file
changes, which is also how a new process knows the switch at import without a network wait.
"""

from __future__ import annotations

import threading
import time

import msgspec

from costwatch import statefile
from costwatch.instrumentation.delivery import Backoff
from costwatch.protocol import KillSwitchState

__all__ = ["LONG_POLL_S", "KillSwitchWatch"]

_state_decoder = msgspec.json.Decoder(KillSwitchState)
LONG_POLL_S = 20.0  # how long the daemon may hold a kill-switch poll open


class KillSwitchWatch:
    """The long-poll thread and the state file for `Emitter` (a mixin: it shares the emitter's state)."""

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
        backoff = Backoff()
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
